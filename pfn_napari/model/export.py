"""Export a trained :class:`~pfn_napari.model.pfn.PFNSystem` to TorchScript and ONNX.

Both graphs take one input ``images (1, 3, H, W)`` float32 0..255 RGB of the size given at
export (``--size``; the stride-8 slicing is fixed at trace time, so pad or resize to it) and
return the tuple ``(seg_logits (1, C+1, h, w), locations (1, L, h, w), counts (1, C))``.
TorchScript comes from ``torch.jit.trace``; ONNX from ``torch.onnx.export`` (the TorchScript
based exporter, ``dynamo=False``: it needs no onnxscript).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .pfn import PFNSystem

OUTPUT_NAMES = ("seg_logits", "locations", "counts")


class ExportWrapper(nn.Module):
    """``images -> (seg_logits, locations, counts)`` of a complete system (tensors only)."""

    def __init__(self, system: PFNSystem) -> None:
        super().__init__()
        if not system.complete:
            raise CheckpointError("export needs a stage-2 (instance) or unified model: this one "
                                  "has no location / count heads")
        self.system = system

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.system(images)
        assert out.seg_logits is not None and out.locations is not None and out.counts is not None
        return out.seg_logits, out.locations, out.counts


def parse_size(text: str | int) -> tuple[int, int]:
    """``'321'`` -> (321, 321); ``'353x481'`` -> (353, 481) (H x W)."""
    parts = str(text).lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected N or HxW, e.g. 321 or 353x481") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 9:
        raise ValueError(f"size {text!r}: expected N or HxW with sides >= 9")
    return size  # type: ignore[return-value]


def export_system(system: PFNSystem, out_dir: str | Path, size: tuple[int, int] = (321, 321),
                  onnx: bool = True, opset: int = 17) -> dict[str, Path]:
    """Write ``pfn.pt`` (TorchScript), ``pfn.onnx`` and ``export.json`` (input size, output
    names and shapes, encoding, classes) into ``out_dir``. Returns the written paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(system).eval()
    example = torch.full((1, 3, *size), 127.0)  # (1, 3, H, W) 0..255 RGB
    paths: dict[str, Path] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected
        eager = wrapper(example)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        paths["torchscript"] = out / "pfn.pt"
        traced.save(str(paths["torchscript"]))
        if onnx:
            paths["onnx"] = out / "pfn.onnx"
            torch.onnx.export(wrapper, (example,), str(paths["onnx"]), dynamo=False,
                              input_names=["images"], output_names=list(OUTPUT_NAMES),
                              opset_version=opset)
    cfg = system.cfg
    meta = {"input": {"name": "images", "shape": [1, 3, *size], "dtype": "float32",
                      "range": "0..255 RGB"},
            "outputs": {n: list(t.shape) for n, t in zip(OUTPUT_NAMES, eager)},
            "backbone": cfg.backbone, "encoding": cfg.encoding, "num_classes": cfg.num_classes}
    paths["meta"] = out / "export.json"
    paths["meta"].write_text(json.dumps(meta, indent=2))
    return paths
