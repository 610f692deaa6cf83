"""Writing outputs safely: a writable folder checked before the work, atomic writes with
per-process temporary names, a clear message on a full disk, stale temporaries cleaned up.

Every file the package writes (checkpoints, metrics, predictions, PNGs) goes through
:func:`atomic_write`: the bytes go to ``.NAME.PID.RANDOM.tmp`` in the target folder, are
flushed and ``fsync``-ed, then ``os.replace``-d over ``NAME``. A failed or killed write leaves
the previous ``NAME`` intact; two processes never share a temporary name; and
:func:`remove_stale_temporaries` deletes the temporaries of processes that no longer run.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``path`` (and its parents) if needed and check that a file can be written in it.

    Raises :class:`OutputError` when ``path`` is a file, or the folder cannot be created or
    written (read-only, no permission, disk full).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out}: is a file, not a folder; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".pfn-write-test.{os.getpid()}.", suffix=".tmp",
                                     dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {out}: cannot write in this folder ({_reason(exc)}); "
                          "pass a writable folder") from None
    return out


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full"
    return exc.strerror or str(exc)


def write_error(path: str | os.PathLike, exc: OSError, kept: str = "") -> OutputError:
    """The :class:`OutputError` for a failed write of ``path``: "disk full while writing
    PATH" on ENOSPC, else "cannot write PATH (reason)"; ``kept`` is appended."""
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}{kept}; free some space and run again")
    return OutputError(f"cannot write {path} ({_reason(exc)}){kept}")


class _RecordingFile:
    """A binary file that remembers the first ``OSError`` of ``write`` (``torch.save`` turns
    it into an opaque ``RuntimeError``; this keeps the real reason, e.g. ENOSPC)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def temporary_prefix(path: Path) -> str:
    """``.NAME.PID.``: the start of every temporary name of ``path`` made by this process."""
    return f".{path.name}.{os.getpid()}."


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary binary file next to ``path``, then move it over ``path``.

    The temporary name is unique to the process (``.NAME.PID.RANDOM.tmp``), flushed and
    ``fsync``-ed before ``os.replace``; on any failure it is removed and ``path`` keeps its
    previous content. A failed write to the disk (full disk, read-only, ...) is an
    :class:`OutputError` ("disk full while writing PATH"); other exceptions of ``write`` pass.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({_reason(exc)})") from None
    umask = os.umask(0)
    os.umask(umask)
    sink = _RecordingFile(os.fdopen(fd, "wb"))
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with sink._fh:
            write(sink)  # type: ignore[arg-type]
            sink._fh.flush()
            os.fsync(sink._fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        err = sink.error or (exc if isinstance(exc, OSError) else None)
        if err is None:
            raise
        kept = "; the previous file is kept" if path.exists() else ""
        raise write_error(path, err, kept) from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or unknown: keep its files
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.PID.RANDOM.tmp`` files of :func:`atomic_write` in ``folder`` whose
    process no longer runs (left by a kill during a save); returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and entry.is_file() and not _alive(int(m.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


class FolderBusy(Exception):
    """Raised by :func:`lock_file` when another process holds the lock; ``holder`` is the pid it
    wrote there ('unknown' if it has not yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: locked by pid {holder}")
        self.path, self.holder = path, holder


def lock_file(path: str | os.PathLike) -> Any:
    """Take an exclusive ``flock`` on the file ``path`` (created if needed) and write this pid in
    it; return the open file, to keep open while the lock is needed, or ``None`` where the
    system has no file locks (Windows, some NFS mounts). The system releases the lock when the
    process ends, even on ``kill -9``, so the file of a dead run is simply taken over.

    Raises:
        FolderBusy: another process holds it (``pfn train`` and ``pfn predict`` say so in one
            line naming the folder).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path = Path(path)
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fh)
            fh.close()
            raise FolderBusy(path, holder) from None
        except OSError:  # pragma: no cover - a file system without locks: go unlocked
            fh.close()
            return None
        try:  # the file we locked may have been removed by a run that just ended: lock anew
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _lock_holder(fh: Any) -> str:
    """The pid written in a lock file by the run holding it ('unknown' if it has not yet)."""
    import time

    for _ in range(20):
        fh.seek(0)
        text = fh.read().strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"


def release_lock_file(path: str | os.PathLike, fh: Any) -> None:
    """Remove the lock file (still holding the lock, so no run can take the old file), then
    release it."""
    try:
        Path(path).unlink()
    except OSError:
        pass
    fh.close()
