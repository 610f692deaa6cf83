"""``pfn export CHECKPOINT --out DIR [--size 321]``: TorchScript + ONNX of a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, OutputError, PFNError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to TorchScript (.pt) and ONNX",
        description="Write pfn.pt (torch.jit.trace), pfn.onnx and export.json into DIR, each "
                    "atomically; a DIR holding an earlier export is refused unless --overwrite. "
                    "The graphs take (1, 3, H, W) float32 0..255 RGB of the given size and return "
                    "(seg_logits, locations, counts).")
    p.add_argument("checkpoint", help="a stage-2 (instance) or unified checkpoint or weights file "
                                      "('default': the shipped weights)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="321", help="input size N or HxW (default 321)")
    p.add_argument("--no-onnx", action="store_true", help="write TorchScript only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the export files an earlier export left in --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..inference import default_weights_path
    from ..model.export import EXPORT_FILES, export_system, parse_size
    from ..output import check_output_dir

    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise PFNError(f"--size: {exc}") from None
    shipped = args.checkpoint in ("", "default")
    path = default_weights_path() if shipped else Path(args.checkpoint)
    system, _cfg, _meta = load_checkpoint(path, map_location="cpu")
    if not system.complete:
        raise CheckpointError(f"{path}: this checkpoint has no location / count heads (stage 1); "
                              "export needs a stage-2 (instance) or unified checkpoint")
    out = check_output_dir(args.out)
    earlier = [name for name in EXPORT_FILES.values() if (out / name).exists()]
    if earlier and not args.overwrite:
        raise OutputError(f"--out {out}: already holds an export ({', '.join(earlier)}); pass "
                          "another --out, or --overwrite to replace it")
    try:
        paths = export_system(system, out, size=size, onnx=not args.no_onnx)
    except ImportError as exc:  # torch.onnx needs the onnx package
        raise PFNError(f"ONNX export needs the onnx package ({exc}); pip install onnx, or pass "
                       "--no-onnx") from None
    for kind, written in paths.items():
        print(f"{kind}: {written}")
    return 0
