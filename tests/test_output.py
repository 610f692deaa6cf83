"""output.py: writable-folder check, atomic writes with per-process names, stale temporaries."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from pfn_napari.errors import OutputError
from pfn_napari.output import (
    atomic_write,
    atomic_write_text,
    check_output_dir,
    remove_stale_temporaries,
    temporary_prefix,
)


def test_check_output_dir_creates_and_refuses_files_and_read_only_folders(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe file is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"--out .*f: is a file, not a folder"):
        check_output_dir(tmp_path / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root")
        with pytest.raises(OutputError, match=r"--out .*ro: cannot write in this folder "
                                              r"\(Permission denied\)"):
            check_output_dir(ro)
    finally:
        ro.chmod(0o755)


def test_atomic_write_is_atomic_and_names_a_full_disk(tmp_path):
    path = atomic_write_text(tmp_path / "m.json", "old")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["m.json"]

    def fails(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"disk full while writing .*m\.json; the previous "
                                          "file is kept"):
        atomic_write(path, fails)
    with pytest.raises(ZeroDivisionError):  # errors that are not about the disk pass through
        atomic_write(path, lambda fh: 1 / 0)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["m.json"]
    assert temporary_prefix(path) == f".m.json.{os.getpid()}."


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".last.pt.{dead}.abc123_x.tmp"
    mine = tmp_path / f".last.pt.{os.getpid()}.zz9.tmp"  # a save in progress: kept
    other = tmp_path / ".last.pt.tmp"  # not ours: kept
    for p in (stale, mine, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name])
