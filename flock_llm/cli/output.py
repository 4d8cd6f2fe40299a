"""Where the review job's outputs go: appended to a JSONL file (or stdout) as batches finish, one batch per
write, so an interrupted run keeps every batch that finished and never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OutputFile", "write_atomically"]


class OutputFile:
    """A JSONL output written batch by batch: each batch's lines go out in one `write()` on a file opened for
    appending, so a reader (or a run killed mid-way) sees whole batches only. A write that fails part-way (a
    full disk, a file size limit) is cut back to the end of the last whole batch before the error is raised, so
    the file never ends in the middle of a line.

    The file is started afresh (truncated) when opened: open it when the run starts, not before. An existing
    file keeps its mode, a new one gets the umask's. `target=None` writes to stdout.
    """

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.records = 0
        self._fd = -1
        self._size = 0
        if target is not None:
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one batch's records (all of them, or none).

        Raises:
            OSError: the batch could not be written (the file was cut back to the batch before).
        """
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # text UTF-8 cannot carry (a lone surrogate): JSON escapes, not a lost batch
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
            data = text.encode("ascii")
        if self._fd < 0:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            self._append(data)
        self.records += len(records)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one write; a short write (disk nearly full) goes on
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):  # a device (/dev/full) cannot be truncated; a file can
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

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
