"""Reading and writing files safely: reads that cannot hang or run away, writes that a
crash never leaves torn."""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

_CHUNK = 1 << 24  # bytes per read: a large limit is not a buffer of that size
# a temporary of atomic_write: `.NAME.` and mkstemp's eight random characters
_TEMPORARY = r"\.{name}\.[a-z0-9_]{{8}}"


class FileError(Exception):
    """A file that cannot be read or written as asked: one line naming it and why."""


class FileTooLarge(FileError):
    """A file holding more bytes than a reader takes; `size` is None when the file
    system did not tell (files in /proc report 0)."""

    def __init__(self, message: str, size: int | None, limit: int):
        super().__init__(message)
        self.size, self.limit = size, limit


def reason(e: BaseException) -> str:
    """Why an OSError (or a ValueError, for a NUL in a name) happened, in words."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _regular(mode: int, name: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _KINDS if test(mode)), "a special file")
        raise FileError(f"{name} is not a regular file ({kind})")


def read_limited(path: str | Path, limit: int, what: str = "") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them, else FileError.

    Anything but a regular file (a folder, a FIFO, /dev/zero, a socket) is refused: it
    could block or never end. It is checked before the open (opening a device may do
    something) and again on the opened descriptor (nothing can swap it in between);
    the open cannot block (O_NONBLOCK). At most `limit` + 1 bytes are read whatever
    size the file reports, since files in /proc report 0 and a file may grow while it
    is read. `what` names the file in messages ("data", "checkpoint")."""
    name = f"{what} {path}" if what else str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        _regular(os.stat(path).st_mode, name)
        fd = os.open(path, flags)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise FileError(f"cannot read {name}: {reason(e)}") from None
    try:
        info = os.fstat(fd)
        _regular(info.st_mode, name)
        if info.st_size > limit:
            raise FileTooLarge(f"{name} is larger than {limit:,} bytes ({info.st_size:,} bytes)", info.st_size, limit)
        parts, total = [], 0
        while total <= limit:
            part = os.read(fd, min(limit + 1 - total, _CHUNK))
            if not part:
                break
            parts.append(part)
            total += len(part)
    except OSError as e:
        raise FileError(f"cannot read {name}: {reason(e)}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise FileTooLarge(f"{name} is larger than {limit:,} bytes", None, limit)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def atomic_write(path: Path, data: bytes) -> None:
    """A temporary file beside `path`, fsynced, then renamed over it: a crash at any moment
    leaves the old file or the new one, never a torn one. Once the new file is in place,
    temporaries of `path` left by a writer that was killed are removed, so `path` is
    assumed to have one writer at a time (a run folder is locked by its training).
    An OSError (a read-only folder, a full disk) is a FileError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise FileError(f"cannot write {path}: {reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FileError(f"cannot write {path}: {reason(e)}") from None
        raise
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    pattern = re.compile(_TEMPORARY.format(name=re.escape(path.name)))
    try:
        stale = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
    except OSError:
        pass  # the new file is written; a leftover temporary is untidy, not wrong
