"""The fake server's Batch API (OpenAI-compatible): `POST /v1/files` (a JSONL of requests), `POST /v1/batches`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, `GET /v1/batches` and `GET /v1/files/{id}/content`.

A job completes `completion_delay_s` after it was created (checked when it is retrieved): each line is answered
like a chat request (same answers, limits and token counts), except `failed_line_rate` of the lines (seeded),
which go to the error file with a 500; `expire_next` jobs expire instead (every line to the error file with
code "batch_expired"). While the server fails every request (`fail_status`, `outage()`), its Batch API fails
too. `line_submissions` counts how many jobs carried each custom_id; `line_bills` how many times each line was
answered in a job (what a provider bills: the lines of output files, of completed and of cancelled jobs).

Fault modes, for the side paths: `lose_next` (jobs the provider answers 404 for), `malformed_next` (output lines
cut in half), `duplicate_in_errors` (answered lines also listed in the error file), `hold_creation` (job creation
waits until `release_creation()`, then fails without creating: a client killed between upload and creation),
`ignore_cancel` (a cancelled job completes anyway), `answered_before_cancel` (lines a cancelled job answered),
`output_padding` (bytes added to each answer: large output files).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fake_openai import FakeOpenAIServer

__all__ = ["FakeBatches"]

Reply = tuple[int, Any, dict[str, str]]


@dataclass
class _Job:
    id: str
    input_file_id: str
    created: float
    metadata: dict[str, Any]
    status: str = "in_progress"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "request_counts": self.counts,
            "metadata": self.metadata,
        }


class FakeBatches:
    """The Batch API of one FakeOpenAIServer."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.completion_delay_s = 0.2
        self.failed_line_rate = 0.0
        self.expire_next = 0
        """The next this many jobs expire (nothing answered)."""
        self.jobs_created = 0
        self.files_uploaded = 0
        self.line_submissions: Counter[str] = Counter()
        self.lines_failed = 0
        self.lines_expired = 0
        self.lines_billed = 0
        self.duplicated_ids = 0
        """Request ids that came more than once in one job's input file."""
        self.failed_calls = 0
        """Batch API calls answered with an error because the provider was down."""
        self.line_bills: Counter[str] = Counter()
        """How many times each custom_id was answered in a job (billed)."""
        self.retrievals: Counter[str] = Counter()
        """How many times each job id was retrieved (polled), known to the provider or not."""
        self.lose_next = 0
        """The next this many jobs are created, then unknown to the provider (404 on retrieve and cancel)."""
        self.malformed_next = 0
        """The next this many answered lines are cut in half in the output file (not JSON)."""
        self.duplicate_in_errors = 0
        """The next this many answered lines are also listed in the error file (with a 500)."""
        self.hold_creation = False
        """Job creation waits until `release_creation()`, then fails with a 503 without creating a job."""
        self.creations_held = 0
        self.ignore_cancel = False
        """A cancelled job goes on and completes (answers that arrive after the cancellation)."""
        self.answered_before_cancel = 0
        """How many lines of a cancelled job were answered before the cancellation (they are billed)."""
        self.cancels = 0
        self.output_padding = 0
        """Bytes added to each answer line (`system_fingerprint`): large output files for memory tests."""
        self._release = threading.Event()
        self._files: dict[str, bytes] = {}
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)
        self._random = random.Random(17)
        self._lock = threading.Lock()

    # -- HTTP ---------------------------------------------------------------------------------------------

    def post(self, path: str, raw: bytes, content_type: str) -> Reply:
        status = self.server.failing()
        if status is not None:  # a provider that is down fails its Batch API too
            self.failed_calls += 1
            return status, {"error": {"message": "the fake provider fails", "type": "server_error"}}, {}
        if path.endswith("/files"):
            return self._upload(raw, content_type)
        if path.endswith("/batches"):
            return self._create(json.loads(raw or b"{}"))
        if path.endswith("/cancel"):
            return self._cancel(path.split("/")[-2])
        return 404, {"error": {"message": f"no route {path}"}}, {}

    def get(self, path: str) -> Reply:
        status = self.server.failing()
        if status is not None:
            self.failed_calls += 1
            return status, {"error": {"message": "the fake provider fails", "type": "server_error"}}, {}
        parts = path.split("/")
        if path.endswith("/content") and len(parts) >= 2:
            data = self._files.get(parts[-2])
            return (200, data, {}) if data is not None else (404, {"error": {"message": "no such file"}}, {})
        if path.endswith("/batches"):
            return 200, {"object": "list", "data": [j.as_dict() for j in self._jobs.values()], "has_more": False}, {}
        job = self._known(parts[-1])
        with self._lock:
            self.retrievals[parts[-1]] += 1
        if job is None:
            return 404, {"error": {"message": "no such batch", "code": "batch_not_found"}}, {}
        self._finish_if_due(job)
        return 200, job.as_dict(), {}

    def release_creation(self) -> None:
        """End `hold_creation`: held creations fail (503) without creating a job; later ones create."""
        self.hold_creation = False
        self._release.set()

    def _known(self, batch_id: str) -> _Job | None:
        job = self._jobs.get(batch_id)
        return None if job is None or job.metadata.get("_lost") else job

    def _cancel(self, batch_id: str) -> Reply:
        job = self._known(batch_id)
        if job is None:
            return 404, {"error": {"message": "no such batch", "code": "batch_not_found"}}, {}
        with self._lock:
            self.cancels += 1
            if job.status == "in_progress" and not self.ignore_cancel:
                job.status = "cancelling"
        return 200, job.as_dict(), {}

    # -- work ---------------------------------------------------------------------------------------------

    def _upload(self, raw: bytes, content_type: str) -> Reply:
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        data = b""
        for part in message.iter_parts():
            if part.get_filename() is not None or part.get_param("name", header="content-disposition") == "file":
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
        file_id = f"file-{next(self._ids)}"
        with self._lock:
            self._files[file_id] = data
            self.files_uploaded += 1
        body = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": "requests.jsonl", "purpose": "batch", "status": "processed"}  # fmt: skip
        return 200, body, {}

    def _create(self, request: dict[str, Any]) -> Reply:
        if self.hold_creation:
            with self._lock:
                self.creations_held += 1
            self._release.wait(60.0)
            return 503, {"error": {"message": "the fake provider did not create the job", "type": "server_error"}}, {}
        file_id = str(request.get("input_file_id", ""))
        if file_id not in self._files:
            return 400, {"error": {"message": f"no such file {file_id}"}}, {}
        job = _Job(f"batch_{next(self._ids)}", file_id, time.time(), dict(request.get("metadata") or {}))
        lines = [json.loads(line) for line in self._files[file_id].splitlines() if line.strip()]
        job.counts["total"] = len(lines)
        with self._lock:
            self._jobs[job.id] = job
            self.jobs_created += 1
            ids = Counter(str(line.get("custom_id")) for line in lines)
            self.line_submissions.update(ids)
            self.duplicated_ids += sum(n - 1 for n in ids.values())
            if self.expire_next > 0:
                self.expire_next -= 1
                job.metadata["_expire"] = "1"
            if self.lose_next > 0:
                self.lose_next -= 1
                job.metadata["_lost"] = "1"
        return 200, job.as_dict(), {}

    def _finish_if_due(self, job: _Job) -> None:
        with self._lock:
            cancelling = job.status == "cancelling"
            if not cancelling and (job.status != "in_progress" or time.time() < job.created + self.completion_delay_s):
                return
            job.status = "finalizing"
        lines = [json.loads(line) for line in self._files[job.input_file_id].splitlines() if line.strip()]
        expire = job.metadata.pop("_expire", None) is not None
        outputs: list[str] = []
        errors: list[str] = []
        for n, line in enumerate(lines):
            custom_id = line.get("custom_id")
            if cancelling and n >= self.answered_before_cancel:
                continue  # never started: not in any file, not billed
            if expire:
                errors.append(json.dumps({"id": f"req_{next(self._ids)}", "custom_id": custom_id, "response": None,
                               "error": {"code": "batch_expired", "message": "the batch expired"}}))  # fmt: skip
                continue
            if self._random.random() < self.failed_line_rate:
                errors.append(json.dumps({"id": f"req_{next(self._ids)}", "custom_id": custom_id,
                               "response": {"status_code": 500, "body": {"error": {"message": "line failed"}}},
                               "error": None}))  # fmt: skip
                continue
            self._answer(line, outputs, errors)
        with self._lock:
            if outputs:
                job.output_file_id = self._store("\n".join(outputs) + "\n")
            if errors:
                job.error_file_id = self._store("\n".join(errors) + "\n")
            job.counts.update(completed=len(outputs), failed=len(errors))
            job.status = "expired" if expire else "cancelled" if cancelling else "completed"
            self.lines_failed += 0 if expire else len(errors)
            self.lines_expired += len(errors) if expire else 0

    def _answer(self, line: dict[str, Any], outputs: list[str], errors: list[str]) -> None:
        """Answer one line like a chat request; bill it when it is answered."""
        custom_id, request = line.get("custom_id"), line.get("body") or {}
        content, _ = self.server.answer(request)
        status, body, _ = self.server.complete(request, content)
        if status == 200 and self.output_padding:
            body["system_fingerprint"] = "x" * self.output_padding
        entry = json.dumps({"id": f"req_{next(self._ids)}", "custom_id": custom_id,
                            "response": {"status_code": status, "body": body}, "error": None})  # fmt: skip
        if status != 200:
            errors.append(entry)
            return
        with self._lock:
            self.line_bills[str(custom_id)] += 1
            self.lines_billed += 1
            if self.duplicate_in_errors > 0:
                self.duplicate_in_errors -= 1
                errors.append(json.dumps({"id": f"req_{next(self._ids)}", "custom_id": custom_id,
                               "response": {"status_code": 500, "body": {"error": {"message": "line failed"}}},
                               "error": None}))  # fmt: skip
            if self.malformed_next > 0:
                self.malformed_next -= 1
                entry = entry[: len(entry) // 2]
        outputs.append(entry)

    def _store(self, text: str) -> str:
        file_id = f"file-{next(self._ids)}"
        self._files[file_id] = text.encode()
        return file_id
