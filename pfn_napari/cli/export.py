"""``pfn export CHECKPOINT --out DIR [--size 321]``: TorchScript + ONNX of a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PFNError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to TorchScript (.pt) and ONNX",
        description="Write pfn.pt (torch.jit.trace), pfn.onnx and export.json into DIR. The "
                    "graphs take (1, 3, H, W) float32 0..255 RGB of the given size and return "
                    "(seg_logits, locations, counts).")
    p.add_argument("checkpoint", help="a stage-2 (instance) or unified checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="321", help="input size N or HxW (default 321)")
    p.add_argument("--no-onnx", action="store_true", help="write TorchScript only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..model.export import export_system, parse_size

    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise PFNError(f"--size: {exc}") from None
    from ..checkpoint import load_checkpoint

    system, cfg, _meta = load_checkpoint(Path(args.checkpoint), map_location="cpu")
    paths = export_system(system, args.out, size=size, onnx=not args.no_onnx)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
