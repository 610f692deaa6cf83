"""The ``pfn`` command line: ``pfn train | finetune | evaluate | predict | export | demo``.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors a user can act on (:class:`~pfn_napari.errors.PFNError`) are printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("train", "finetune", "evaluate", "predict", "export", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfn", description="Proposal-Free Network instance segmentation (PFN, Liang et al.)")
    parser.add_argument("--version", action="version", version=f"pfn-napari {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"pfn_napari.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pfn_napari.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pfn-napari")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from ..errors import PFNError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except PFNError as exc:
        print(f"pfn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pfn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
