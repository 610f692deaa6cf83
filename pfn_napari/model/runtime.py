"""The fast CPU path: the backbone trunks on ONNX Runtime, everything else unchanged.

Most of PFN's CPU time is the two EfficientNet-Lite0 trunks (stem, 16 MBConv blocks, head
conv): PyTorch runs their frozen batch norms as separate multiply/add passes and every ReLU6
as its own pass; ONNX Runtime folds the norms into the convolutions, fuses the activations
and picks blocked memory layouts, about 3x less time on the same CPU threads. Only the
trunks go there because they are purely convolutional: one graph, exported once with a
dynamic height and width, serves every image size. The size-dependent glue (aligning to the
stride-8 grid, the location streams and their coordinates, the count head, the gate) keeps
running in PyTorch, in the very modules of the loaded system, so it cannot drift from it.

One algebraic move rides along: the backbone's ``project`` 1x1 conv (1280 -> fc7 channels)
runs inside the trunk graph *before* the bilinear alignment to the grid instead of after it.
Both are linear and the interpolation weights of every output sum to one, so
``project(align(head)) == align(project(head))`` (up to float rounding), at a quarter of the
pixels and a fifth of the channels for the alignment.

>>> fast = onnx_system(system)               # doctest: +SKIP
>>> out = fast(images)                       # the NetOutputs of system(images), ~1e-5 apart

The exported graph is cached in memory per process and on disk under :func:`cache_dir`
(``$PFN_CACHE_DIR``, else ``$XDG_CACHE_HOME/pfn-napari``, else ``~/.cache/pfn-napari``), named
by a hash of the trunk's weights, the torch version and :data:`FORMAT`, written atomically,
with a record beside it (``KEY.json``: key, format, sha256). A cached graph is used only when
it matches its record and gives the torch trunk's outputs on a probe image; otherwise it is
rebuilt, with one warning.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .backbones import EfficientNetLite

#: What ``load_model(runtime=...)`` accepts: 'auto' is 'onnx' where it applies, else 'torch'.
RUNTIMES = ("auto", "torch", "onnx")
#: Bumped whenever the exported trunk graph changes meaning (it names the cache files).
FORMAT = "pfn-trunk-v1"
OPSET = 17
#: The trunk graph's outputs, in order: the stride-2/4/8 stage ends and the projected head.
TRUNK_OUTPUTS = ("pool1", "pool2", "pool3", "head")

_SESSIONS: dict[tuple[str, int], Any] = {}  # (weights hash, threads) -> InferenceSession
_GRAPHS: dict[str, bytes] = {}  # weights hash -> ONNX bytes


class RuntimeUnavailable(RuntimeError):
    """ONNX Runtime cannot run this model here (not installed, another backbone, export failed)."""


def cache_dir() -> Path:
    """Where exported graphs are kept between runs (see the module docstring)."""
    env = os.environ.get("PFN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pfn-napari"


class TrunkGraph(nn.Module):
    """What goes to ONNX: ``images (B, 3, H, W) 0..255 RGB -> (pool1 (B, 16, H/2, W/2),
    pool2 (B, 24, H/4, W/4), pool3 (B, 40 or 48, H/8, W/8), head (B, F, H/os, W/os))``, the
    stage ends of :meth:`EfficientNetLite.forward_trunk` and its head feature through the
    ``project`` conv (ceil-mode sizes: the conv strides of the backbone)."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        _, feats, head = self.backbone.forward_trunk(images)
        return feats["pool1"], feats["pool2"], feats["pool3"], self.backbone.project(head)


def weights_key(backbone: nn.Module) -> str:
    """Hash of everything the trunk graph depends on: its tensors, the geometry of its
    convolutions (stride, dilation, padding: the same tensors at another output stride are
    another graph), torch, :data:`FORMAT`."""
    digest = hashlib.sha256(f"{FORMAT}|opset{OPSET}|torch{torch.__version__}".encode())
    graph = TrunkGraph(backbone)  # type: ignore[arg-type]
    for name, m in graph.named_modules():
        if isinstance(m, nn.Conv2d):
            digest.update(f"{name}{m.stride}{m.dilation}{m.padding}{m.groups}".encode())
    for name, t in graph.state_dict().items():
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def export_trunk(backbone: EfficientNetLite) -> bytes:
    """The trunk as ONNX bytes, with a dynamic batch, height and width."""
    graph = TrunkGraph(copy.deepcopy(backbone).cpu().float()).eval()
    example = torch.full((1, 3, 65, 97), 127.0)  # (1, 3, H, W); any size, the axes are dynamic
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in TRUNK_OUTPUTS})
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notices (deprecations, constant folding)
        torch.onnx.export(graph, (example,), buf, dynamo=False, input_names=["images"],
                          output_names=list(TRUNK_OUTPUTS), dynamic_axes=axes,
                          opset_version=OPSET)
    return buf.getvalue()


def _graph(backbone: EfficientNetLite, key: str, use_disk: bool = True) -> bytes:
    """ONNX bytes of the trunk, checked: from memory, from the disk cache when the file is the
    one its record describes and gives the trunk's outputs on a probe image, else exported
    (and saved). A cache file that fails a check is rebuilt, with one warning."""
    if key in _GRAPHS:
        return _GRAPHS[key]
    file = cache_dir() / "onnx" / f"{key}.onnx"
    data, problem, recorded = None, None, False
    if use_disk and file.is_file():
        data, problem, recorded = _read_cached(file, key)
        if data is not None:
            problem = _probe(backbone, key, data)
            data = None if problem else data
    if data is None:
        data = export_trunk(backbone)
        fresh = _probe(backbone, key, data)
        if fresh:
            raise RuntimeError(f"the exported trunk {fresh}")
        if use_disk:
            _save(file, key, data)
        if problem:
            warnings.warn(f"ONNX cache {file}: {problem}; rebuilt it", RuntimeWarning,
                          stacklevel=4)
    elif use_disk and not recorded:  # a cache file of before the records: now checked
        _save_record(file, key, data)
    _GRAPHS[key] = data
    return data


def _record_path(file: Path) -> Path:
    """The record beside a cached graph: ``KEY.json`` with its key, format and sha256."""
    return file.with_suffix(".json")


def _read_cached(file: Path, key: str) -> tuple[bytes | None, str | None, bool]:
    """``(bytes, None, recorded)`` of a cached graph that matches its record (or has none:
    ``recorded`` False), else ``(None, what is wrong, True)``."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})", True
    try:
        record = json.loads(_record_path(file).read_text())
    except FileNotFoundError:
        return data, None, False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"its record {_record_path(file).name} is unreadable", True
    if not isinstance(record, dict) or record.get("key") != key or \
            record.get("format") != FORMAT:
        return None, "its record names another graph", True
    if record.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, "its bytes are not the ones recorded (corrupt or replaced)", True
    return data, None, True


def _probe(backbone: EfficientNetLite, key: str, data: bytes) -> str | None:
    """``None`` when the graph ``data`` loads and gives the torch trunk's outputs (to 1e-3 of
    their scale) on a fixed probe image; else what is wrong. A bad graph's session is dropped."""
    threads = max(1, torch.get_num_threads())
    try:
        sess = _session(key, data, threads)
    except Exception as exc:  # noqa: BLE001 - ORT raises many kinds on a damaged graph
        return f"does not load ({type(exc).__name__})"
    x = torch.rand(1, 3, 33, 41, generator=torch.Generator().manual_seed(0)) * 255  # (1, 3, H, W)
    graph = TrunkGraph(copy.deepcopy(backbone).cpu().float()).eval()
    with torch.no_grad():
        ref = graph(x)
    try:
        got = sess.run(None, {"images": x.numpy()})
    except Exception as exc:  # noqa: BLE001
        got, why = None, f"fails on a probe image ({type(exc).__name__})"
    if got is not None:
        worst = max((float(np.abs(g - r.numpy()).max()) / (1.0 + float(r.abs().max()))
                     if g.shape == tuple(r.shape) else float("inf")) for g, r in zip(got, ref))
        if worst <= 1e-3:
            return None
        why = f"gives other outputs than the weights it is named after (off by {worst:.2g})"
    _SESSIONS.pop((key, threads), None)
    return why


def _save(file: Path, key: str, data: bytes) -> None:
    """Write the graph, then its record, each atomically; a read-only cache keeps it in
    memory only."""
    from ..errors import OutputError
    from ..output import atomic_write

    try:
        atomic_write(file, lambda fh: fh.write(data))
    except OutputError:
        return
    _save_record(file, key, data)


def _save_record(file: Path, key: str, data: bytes) -> None:
    from ..errors import OutputError
    from ..output import atomic_write_text

    record = {"key": key, "format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
              "bytes": len(data)}
    try:
        atomic_write_text(_record_path(file), json.dumps(record))
    except OutputError:
        pass


def _session(key: str, graph: bytes, threads: int) -> Any:
    """A CPU InferenceSession with ``threads`` intra-op threads (cached per process)."""
    import onnxruntime as ort

    sess = _SESSIONS.get((key, threads))
    if sess is None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: PyTorch runs the heads on the same cores right after
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        _SESSIONS[(key, threads)] = sess
    return sess


class OnnxTrunk:
    """Stands in for :meth:`EfficientNetLite.forward_trunk` (same returns; ``head`` already
    projected, see the module docstring). The session follows ``torch.get_num_threads()``."""

    def __init__(self, backbone: EfficientNetLite, key: str, graph: bytes) -> None:
        self.mean, self.std = backbone.mean.cpu(), backbone.std.cpu()
        self.key, self.graph = key, graph

    def __call__(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        sess = _session(self.key, self.graph, max(1, torch.get_num_threads()))
        inp = images.detach().float().cpu().contiguous()  # (B, 3, H, W)
        pool1, pool2, pool3, head = (torch.from_numpy(a) for a in sess.run(
            None, {"images": inp.numpy()}))
        x = (inp - self.mean) / self.std  # (B, 3, H, W): the input stream's feature
        return x, {"pool1": pool1, "pool2": pool2, "pool3": pool3}, head


def onnx_available() -> bool:
    """True when the exporter's ``onnx`` and ``onnxruntime`` both import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def supports(system: nn.Module) -> bool:
    """True when every network of ``system`` has an EfficientNet-Lite (0, 1 or 2) backbone."""
    nets = [n for n in (getattr(system, "category", None), getattr(system, "instance", None))
            if n is not None]
    return bool(nets) and all(isinstance(n.backbone, EfficientNetLite) for n in nets)


def onnx_system(system: nn.Module, use_disk_cache: bool = True) -> nn.Module:
    """A copy of ``system`` (a :class:`~pfn_napari.model.pfn.PFNSystem`) whose backbone trunks
    run on ONNX Runtime (CPU); same call, same :class:`NetOutputs`. The copy is taken now: later
    changes to ``system``'s weights do not reach it.

    Raises :class:`RuntimeUnavailable` when onnxruntime is missing, a backbone is not an
    EfficientNet-Lite, or the export fails.
    """
    if not onnx_available():
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnx onnxruntime)")
    if not supports(system):
        raise RuntimeUnavailable("the ONNX runtime path covers EfficientNet-Lite backbones only")
    fast = copy.deepcopy(system).cpu().eval()
    for net in (fast.category, fast.instance):
        if net is not None:
            onnx_backbone(net.backbone, use_disk_cache)
    return fast


def onnx_backbone(bb: EfficientNetLite, use_disk_cache: bool = True) -> None:
    """Move ``bb``'s trunk (and its ``project`` conv) onto ONNX Runtime, in place: its
    ``forward_trunk`` then returns the projected head (the ImageNet prior sets ``project`` to
    an identity first, so its head stays the 1280 ImageNet features). Raises
    :class:`RuntimeUnavailable` when the export or the session fails."""
    if not onnx_available():
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnx onnxruntime)")
    key = weights_key(bb)
    try:
        graph = _graph(bb, key, use_disk_cache)
        _session(key, graph, max(1, torch.get_num_threads()))  # fail here, not mid-run
    except Exception as exc:  # the exporter and ORT raise many kinds
        raise RuntimeUnavailable(f"ONNX export of the trunk failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    bb.forward_trunk = OnnxTrunk(bb, key, graph)  # instance attribute: shadows the method
    bb.project = nn.Identity()  # already applied inside the graph
    bb._blocks = nn.ModuleList()  # the trunk's torch weights are not needed any more
