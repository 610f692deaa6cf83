"""Packaging: the default weights travel inside the package (wheel, ``pip install .``, editable
install), ``load_model()`` finds them through package resources and ``$PFN_WEIGHTS`` overrides
them; the plugin imports Qt only through qtpy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pfn_napari import inference
from pfn_napari.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "pfn-lite0-voc.pt"


def test_default_weights_are_the_packages_resource(monkeypatch):
    from importlib.resources import files

    monkeypatch.delenv("PFN_WEIGHTS", raising=False)
    path = inference.default_weights_path()
    assert path.name == WEIGHTS and path.is_file()
    # in this checkout the resource is the top-level weights/ folder (the model card's home)
    assert path.parent.resolve() == (REPO / "weights").resolve()
    try:  # an editable install made after the package-dir mapping resolves the package too
        resource = Path(str(files("pfn_napari.weights")))
    except ModuleNotFoundError:  # an editable install from before it: the source fallback
        pytest.skip("pfn_napari.weights not importable here: reinstall with pip install -e .")
    assert resource.resolve() == (REPO / "weights").resolve()


def test_pfn_weights_overrides_the_default(monkeypatch, tmp_path):
    other = tmp_path / "elsewhere.pt"
    monkeypatch.setenv("PFN_WEIGHTS", str(other))
    assert inference.default_weights_path() == other
    with pytest.raises(CheckpointError, match="elsewhere.pt: weights file not found"):
        inference.load_model()


def test_the_plugin_imports_qt_only_through_qtpy():
    bindings = re.compile(r"^\s*(from|import)\s+(PyQt5|PyQt6|PySide2|PySide6)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "pfn_napari").rglob("*.py")
                 if bindings.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def _source_copy(dest: Path) -> Path:
    """What a source distribution holds, copied (a build writes build/ and egg-info)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "pfn_napari", dest / "pfn_napari", ignore=skip, symlinks=True)
    shutil.copytree(REPO / "weights", dest / "weights", ignore=skip)
    return dest


@pytest.mark.slow
def test_a_built_wheel_carries_the_weights_and_finds_them(tmp_path):
    """~1 min on a 2-core CPU: build the wheel, list it, import the package from it."""
    src = _source_copy(tmp_path / "src")
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(src), "-w", str(out)], check=True, cwd=tmp_path)
    wheel = next(out.glob("pfn_napari-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"pfn_napari/weights/{WEIGHTS}" in names and "pfn_napari/weights/README.md" in names
    assert "pfn_napari/weights/pfn-lite0-voc.yaml" in names  # the test-time settings
    assert zipfile.ZipFile(wheel).getinfo(f"pfn_napari/weights/{WEIGHTS}").file_size == \
        (REPO / "weights" / WEIGHTS).stat().st_size
    assert {"pfn_napari/napari.yaml", "pfn_napari/configs/cpu-demo.yaml",
            "pfn_napari/sample_data/skaters.jpg"} <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "pfn_napari").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel: list their package in " \
        "pyproject.toml [tool.setuptools] packages"
    assert not any(n.startswith("weights/") for n in names)  # no stray top-level package

    # a non-editable install: the wheel unpacked on the path, the source tree out of sight
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from pfn_napari import inference as i; p = i.default_weights_path(); "
            "print(p); assert p.is_file(), p")
    env = {k: v for k, v in os.environ.items() if k != "PFN_WEIGHTS"}
    env["PYTHONPATH"] = str(site)
    found = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert Path(found) == site / "pfn_napari" / "weights" / WEIGHTS

    # an editable install maps the package onto the top-level weights/ folder
    subprocess.run([sys.executable, "-c", "import setuptools.build_meta as b; "
                    f"b.build_editable({str(tmp_path / 'editable')!r})"],
                   check=True, cwd=src, capture_output=True)
    editable = next((tmp_path / "editable").glob("*.whl"))
    finder = next(n for n in zipfile.ZipFile(editable).namelist() if n.endswith("_finder.py"))
    text = zipfile.ZipFile(editable).read(finder).decode()
    assert f"'pfn_napari.weights': '{src / 'weights'}'" in text
