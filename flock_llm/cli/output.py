"""Where the review job's outputs go: appended to a JSONL file (or stdout) as batches finish, one batch per
write, so an interrupted run keeps every batch that finished and never half of one."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["OutputFile", "write_atomically"]


class OutputFile:
    """A JSONL output written batch by batch: each batch's lines go out in one `write()` on a file opened for
    appending, so a reader (or a run killed mid-way) sees whole batches only.

    The file is started afresh (truncated) when opened; an existing file keeps its mode, a new one gets the
    umask's. `target=None` writes to stdout.

    Args:
        keep: also keep the records in memory (for a report when writing to stdout).
    """

    def __init__(self, target: Path | None, *, keep: bool = False) -> None:
        self.target = target
        self.records = 0
        self._kept: list[dict[str, Any]] | None = [] if keep else None
        self._fd = -1
        if target is not None:
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one batch's records."""
        if not records:
            return
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if self._fd < 0:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            data = memoryview(text.encode("utf-8"))
            while data:  # a regular file takes it in one write; a short write (disk nearly full) goes on
                data = data[os.write(self._fd, data) :]
        self.records += len(records)
        if self._kept is not None:
            self._kept.extend(records)

    def read_back(self) -> Iterator[dict[str, Any]]:
        """Every record written so far (from the file, or from memory with keep=True)."""
        if self._kept is not None:
            yield from self._kept
            return
        if self.target is None:
            return
        with self.target.open(encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomically(target: Path, text: str) -> None:
    """Write `text` to `target` through a temporary file and a rename: an interrupted write never leaves half a
    file, and no stray temporary file stays behind."""
    # an existing file keeps its mode; a new one gets the umask's (a temporary file is always 0600)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent or Path("."), delete=False, prefix=f".{target.name}.", suffix=".tmp"
    ) as handle:
        try:
            handle.write(text)
            handle.flush()
            os.chmod(handle.name, mode)
        except BaseException:
            handle.close()
            os.unlink(handle.name)  # no stray temporary file
            raise
    os.replace(handle.name, target)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
