"""The import rules of docs/architecture.md, checked on the source (every import statement,
including the ones inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pfn_napari"

#: The layers of docs/architecture.md, bottom first: a module may import its own layer and the
#: layers below it, never one above.
LAYERS = [
    ("base", {"errors", "config", "structures", "output"}),
    ("pure", {"data", "targets", "losses", "grouping", "evaluate", "visualize"}),
    ("model", {"model", "checkpoint"}),
    ("library", {"inference", "predictor", "imagenet", "session", "layer_data", "samples",
                 "producers", "train", "train_data", "run_folder", "finetune", "demo"}),
    ("front ends", {"cli", "napari", "notebook"}),
]
#: Front ends that may use another front end: none. The session, layer data and sample photos
#: napari and the notebook share are library code (siblings); nothing imports the command line.
FRONT_END_USES = {"notebook": set(), "napari": set(), "cli": set()}
#: Upward imports allowed (none: config holds the grouping method names itself).
ALLOWED_UP: set[tuple[str, str]] = set()


def top_module(path: Path) -> str:
    """``pfn_napari/grouping/grouper.py`` -> ``grouping``; ``pfn_napari/config.py`` -> ``config``."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def layer_of(name: str) -> int | None:
    for i, (_, members) in enumerate(LAYERS):
        if name in members:
            return i
    return None


def imported_top_modules(path: Path, text: str | None = None) -> set[str]:
    """The ``pfn_napari.X`` modules (top level X) that ``path`` (or ``text`` as if it were
    that file) imports anywhere in it."""
    tree = ast.parse(path.read_text() if text is None else text)
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package_parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "pfn_napari" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    unknown = {top_module(p) for p in package_files()} - {"__init__", "__main__"}
    unknown = {m for m in unknown if layer_of(m) is None}
    assert not unknown, f"modules without a layer in docs/architecture.md: {sorted(unknown)}"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    me = top_module(path)
    mine = layer_of(me)
    if mine is None:  # the package's __init__ / __main__: lazy re-exports, the CLI entry point
        return
    bad = []
    for other in imported_top_modules(path) - {me}:
        theirs = layer_of(other)
        if theirs is None:
            continue  # pfn_napari.weights (data) and the like
        if theirs > mine and (me, other) not in ALLOWED_UP:
            bad.append(f"{other} ({LAYERS[theirs][0]})")
        elif theirs == mine == len(LAYERS) - 1 and other not in FRONT_END_USES[me]:
            bad.append(f"{other} (another front end)")
    assert not bad, f"{path.relative_to(PACKAGE)} ({LAYERS[mine][0]}) imports {', '.join(bad)}"


def private_imports(path: Path, text: str | None = None) -> list[str]:
    """The ``pfn_napari.X._private`` modules ``path`` imports from outside ``X``."""
    tree = ast.parse(path.read_text() if text is None else text)
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts[:-1])
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] != "pfn_napari" or len(bits) < 3:
                continue
            if bits[2].startswith("_") and bits[1] != top_module(path):
                bad.append(name)
    return bad


def test_no_module_imports_another_packages_private_module():
    """The notebook once imported ``napari._session``, ``._layers`` and ``._sample_data``."""
    bad = {str(p.relative_to(PACKAGE)): private_imports(p) for p in package_files()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"private modules of another package imported: {bad}"
    views = PACKAGE / "notebook" / "views.py"
    assert private_imports(views, "from ..napari._session import PFNSession\n") == \
        ["pfn_napari.napari._session", "pfn_napari.napari._session.PFNSession"]
    assert private_imports(views, "from ..session import PFNSession\n") == []


def test_nothing_in_the_package_imports_the_command_line():
    users = [str(p.relative_to(PACKAGE)) for p in package_files()
             if top_module(p) not in ("cli", "__main__") and "cli" in imported_top_modules(p)]
    assert not users, f"import pfn_napari.cli from the library: {users}"


def test_benchmarks_and_scripts_use_public_modules_only():
    """No ``pfn_napari.x._private`` module nor ``_private`` name imported from the package."""
    root = PACKAGE.parent
    bad = []
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("scripts/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pfn_napari"):
                private = [p for p in node.module.split(".") if p.startswith("_")]
                private += [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    bad.append(f"{path.relative_to(root)}:{node.lineno} {node.module} {private}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("pfn_napari") and any(
                            p.startswith("_") for p in a.name.split(".")):
                        bad.append(f"{path.relative_to(root)}:{node.lineno} {a.name}")
    assert not bad, "private imports: " + "; ".join(bad)


def test_the_checker_resolves_relative_and_local_imports():
    """The checker itself: relative imports at any depth, inside functions, both forms."""
    methods = PACKAGE / "grouping" / "methods.py"
    text = ("from . import spectral\nfrom ..structures import Instances\n"
            "def f():\n    from ..predictor import Predictor\n    import pfn_napari.cli.main\n")
    assert imported_top_modules(methods, text) == {"grouping", "structures", "predictor", "cli"}
    init = PACKAGE / "napari" / "__init__.py"
    assert imported_top_modules(init, "from . import _session\nfrom .. import inference\n") == \
        {"napari", "inference"}
    assert layer_of("predictor") > layer_of("grouping")
