"""Atomic, owner-only file writes: the one way this project replaces a private file.

The new content goes to ``.<name>.tmp`` beside the target, created with mode 0600
(never readable by others, not even for an instant), is fsynced, then renamed over
the target with :func:`os.replace`, and the directory is fsynced so the rename
survives a crash.  A reader sees the old file or the new one, never a torn one; on
failure the old file is untouched and no temporary file is left behind.  A leftover
temporary file from a crash is removed by the next write.

Blocking I/O: call it at start-up or where a short synchronous write is acceptable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing_private", "temp_path", "write_private"]


def temp_path(path: str | os.PathLike[str]) -> Path:
    """Where the new content of ``path`` is written before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing_private(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh, empty, mode-0600 temporary path; on success it replaces ``path``.

    For content another library writes by name (a SQLite database); use
    :func:`write_private` for bytes.  If the block raises, the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)  # a crash's leftover: it may have the wrong mode
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync_path(path.parent)
    except OSError:  # a platform or file system that cannot fsync a directory
        pass


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable and writable by the owner only."""
    with replacing_private(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
