"""Export a trained :class:`~pfn_napari.model.pfn.PFNSystem` to TorchScript and ONNX.

Both graphs take one input ``images (1, 3, H, W)`` float32 0..255 RGB of the size given at
export (``--size``; the stride-8 slicing is fixed at trace time, so pad or resize to it) and
return the tuple ``(seg_logits (1, C+1, h, w), locations (1, L, h, w), counts (1, C))``.
TorchScript comes from ``torch.jit.trace``; ONNX from ``torch.onnx.export`` (the TorchScript
based exporter, ``dynamo=False``: it needs no onnxscript).
"""

from __future__ import annotations

import io
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


#: The sides ``--size`` may take: the stride-8 grid needs 9 pixels; above 4096 the trace alone
#: takes tens of GB.
SIZE_RANGE = (9, 4096)
#: The files :func:`export_system` writes.
EXPORT_FILES = {"torchscript": "pfn.pt", "onnx": "pfn.onnx", "meta": "export.json"}


def parse_size(text: str | int) -> tuple[int, int]:
    """``'321'`` -> (321, 321); ``'353x481'`` -> (353, 481) (H x W), sides in
    :data:`SIZE_RANGE`."""
    parts = str(text).lower().split("x")
    low, high = SIZE_RANGE
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected N or HxW, e.g. 321 or 353x481") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or not all(low <= s <= high for s in size):
        raise ValueError(f"size {text!r}: expected N or HxW with sides from {low} to {high}")
    return size  # type: ignore[return-value]


def export_system(system: PFNSystem, out_dir: str | Path, size: tuple[int, int] = (321, 321),
                  onnx: bool = True, opset: int = 17) -> dict[str, Path]:
    """Write ``pfn.pt`` (TorchScript), ``pfn.onnx`` and ``export.json`` (input size, output
    names and shapes, encoding, classes) into ``out_dir``, each atomically (a temporary file,
    then ``os.replace``: an interrupted export never leaves half a file). Returns the written
    paths by kind. Raises :class:`CheckpointError` for a system without instance heads and
    :class:`~pfn_napari.errors.OutputError` when a file cannot be written."""
    from ..output import atomic_write, atomic_write_text

    out = Path(out_dir)
    wrapper = ExportWrapper(system).eval()
    example = torch.full((1, 3, *size), 127.0)  # (1, 3, H, W) 0..255 RGB
    graphs: dict[str, bytes] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected
        eager = wrapper(example)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        graphs["torchscript"] = _saved(lambda buf: torch.jit.save(traced, buf))
        if onnx:
            graphs["onnx"] = _saved(lambda buf: torch.onnx.export(
                wrapper, (example,), buf, dynamo=False, input_names=["images"],
                output_names=list(OUTPUT_NAMES), opset_version=opset))
    paths: dict[str, Path] = {}
    for kind, data in graphs.items():
        paths[kind] = atomic_write(out / EXPORT_FILES[kind], lambda fh, data=data: fh.write(data))
    cfg = system.cfg
    meta = {"input": {"name": "images", "shape": [1, 3, *size], "dtype": "float32",
                      "range": "0..255 RGB"},
            "outputs": {n: list(t.shape) for n, t in zip(OUTPUT_NAMES, eager)},
            "backbone": cfg.backbone, "encoding": cfg.encoding, "num_classes": cfg.num_classes}
    paths["meta"] = atomic_write_text(out / EXPORT_FILES["meta"], json.dumps(meta, indent=2))
    return paths


def _saved(save) -> bytes:
    """The bytes ``save(buffer)`` writes into an in-memory buffer."""
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()
