"""Rules the package's code keeps, checked on its source with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pfn_napari"

#: The most lines one function or method may span (decorators and docstring included).
MAX_FUNCTION_LINES = 150


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, number of lines)`` of every function and method in
    ``source``, nested ones included (a method reads ``Class.method``)."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((name, first, child.end_lineno - first + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_function_lengths_counts_methods_nested_functions_and_decorators():
    source = ("class A:\n"
              "    @staticmethod\n"
              "    def m():\n"
              "        def inner():\n"
              "            return 1\n"
              "        return inner\n"
              "\n"
              "def f():\n"
              "    pass\n")
    assert function_lengths(source) == [("A.m", 2, 5), ("A.m.inner", 4, 2), ("f", 8, 2)]


def test_no_function_in_the_package_is_over_150_lines():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no .py files under {PACKAGE}"
    too_long = [f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
                for path in files
                for name, line, length in function_lengths(path.read_text(encoding="utf-8"))
                if length > MAX_FUNCTION_LINES]
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines; split them into "
                          "well-named pieces:\n" + "\n".join(too_long))
