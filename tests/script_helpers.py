"""A script of ``scripts/`` or ``benchmarks/`` as a module, for the tests of its pure parts
(the scripts are not a package: each is loaded from its file)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def import_script(relative: str) -> ModuleType:
    """The file ``ROOT / relative`` (e.g. ``scripts/tune_grouping.py``) loaded as a new module
    named by its stem."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
