"""The output folder of a training run (``train.out_dir``, ``--out``): one run at a time
(a lock file), never over another finished run unless told to, and no temporaries of a run
killed while saving. ``pfn train`` and ``pfn finetune`` share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError, PFNError
from .output import (FolderBusy, check_output_dir, lock_file, release_lock_file,
                     remove_stale_temporaries)


#: The lock file of a run in ``train.out_dir``: it holds the pid of the run working there.
LOCK = ".pfn-train.lock"


@contextmanager
def out_dir_lock(out_dir: Path, main: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` while this run works in it (rank 0 only).

    A second run into the same folder (a new one or a ``--resume``) is refused at once with an
    :class:`OutputError` naming the folder and the pid of the run holding it. The lock is an
    ``flock`` on :data:`LOCK`: the system releases it when the process ends, even on
    ``kill -9``, so the lock file of a dead run is simply taken over. Where the file system has
    no locks (some NFS mounts, Windows) the run goes on unlocked.
    """
    lock = _acquire_lock(out_dir) if main else None
    try:
        yield
    finally:
        if lock is not None:
            release_lock_file(out_dir / LOCK, lock)


def _acquire_lock(out_dir: Path) -> Any:
    """The open, locked :data:`LOCK` file of ``out_dir`` holding this pid (None: no locks)."""
    check_output_dir(out_dir, "train.out_dir (--out)")
    try:
        return lock_file(out_dir / LOCK)
    except FolderBusy as busy:
        raise OutputError(f"train.out_dir (--out) {out_dir}: another `pfn train` or "
                          f"`pfn finetune` (pid {busy.holder}) is writing to this folder; wait "
                          "for it to finish or pass another --out") from None


#: The files of a run in ``train.out_dir``; a new run (not ``--resume``) refuses a folder holding
#: any of them unless told to overwrite.
RUN_FILES = ("final.pt", "last.pt", "log.csv", "val.csv")


def claim_out_dir(out_dir: Path, overwrite: bool, main: bool, note) -> None:
    """Refuse (``overwrite=False``) or clear (``True``, rank 0) the run already in ``out_dir``."""
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise PFNError(f"{out_dir} already holds a training run ({', '.join(found)}); pass "
                       f"--resume {out_dir / 'last.pt'} to continue it, --overwrite to replace "
                       "it, or another --out")
    if main:
        for name in found:
            (out_dir / name).unlink()
        for events in (out_dir / "tb").glob("events.out.tfevents.*"):
            events.unlink()
        note(f"replacing the run in {out_dir} (deleted {', '.join(found)} and its TensorBoard "
             "events)")


def prepare_out_dir(out_dir: Path, claim: bool, overwrite: bool, main: bool, note) -> None:
    """The output folder: writable and not another finished run (``claim``: a new run, not a
    resumed one), before any work; rank 0 removes temporaries of a run killed while saving."""
    check_output_dir(out_dir, "train.out_dir (--out)")
    if claim:
        claim_out_dir(out_dir, overwrite, main, note)
    if main:
        for stale in remove_stale_temporaries(out_dir):
            note(f"removed {stale.name}, left by a run killed while saving")
