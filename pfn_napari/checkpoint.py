"""Checkpoints: atomic save, checked load, the model rebuilt from the file alone.

One file format serves two uses:

* a **training checkpoint** (``kind = "training"``, :func:`save_checkpoint`): the weights of the
  :class:`~pfn_napari.model.PFNSystem`, the resolved config, the optimiser, scheduler and AMP
  scaler states, the step and epoch, every random-number state (Python, NumPy, torch, CUDA)
  and a free ``extra`` dict; ``pfn train --resume`` continues from it exactly;
* a **weights file** (``kind = "weights"``, :func:`save_weights`): weights (optionally half
  precision) + config + a small ``meta`` dict, for inference and for shipping.

Both are ``torch.save`` archives of one plain dict::

    {"format": "pfn-napari-checkpoint", "format_version": 1, "kind": "training" | "weights",
     "pfn_napari_version": "0.1.0", "config": {...config_to_dict...},
     "networks": {"category": "category", "instance": "instance"},   # PFNSystem arg -> kind
     "model": {state_dict}, "dtype": "float32" | "float16",
     # training only:
     "optimizer", "scheduler", "scaler", "step", "epoch", "rng", "extra",
     # weights only:
     "meta"}

``networks`` names the networks the :class:`PFNSystem` holds and the ``build_network`` kind of
each, so :func:`load_checkpoint` rebuilds the system from the stored config alone.

Writes are atomic (temporary file in the same folder, ``fsync``, ``os.replace``): a run killed
while saving leaves the previous ``last.pt`` intact. Loads use ``torch.load(weights_only=True)``
(no code runs from a file) and turn every failure (missing, truncated, not ours, another format
version, a config that does not build, weights that do not fit) into one
:class:`~pfn_napari.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import ConfigError, PFNConfig, config_from_dict, config_to_dict
from .errors import CheckpointError
from .output import atomic_write

FORMAT_TAG = "pfn-napari-checkpoint"
FORMAT_VERSION = 1
FILE_KINDS = ("training", "weights")
#: The file's own entries that :func:`load_checkpoint` puts into ``meta``; :func:`save_weights`
#: writes them again, so :func:`run_meta` leaves them out of a meta being saved anew.
HEADER_KEYS = ("kind", "format_version", "pfn_napari_version", "networks", "dtype")


# --------------------------------------------------------------------------- random states

def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and CUDA generator states, as plain types and
    tensors (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only when the number of
    devices matches)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------------------- writing

def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`~pfn_napari.output.atomic_write`: a
    temporary file unique to this process, ``fsync``, ``os.replace``). A full disk is an
    :class:`~pfn_napari.errors.OutputError` naming the file; the previous file is kept."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def _header(kind: str, config: PFNConfig, networks: Mapping[str, str]) -> dict[str, Any]:
    if not networks:
        raise ValueError("a checkpoint must name at least one network")
    return {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "pfn_napari_version": __version__,
        "config": config_to_dict(config),
        "networks": {str(k): str(v) for k, v in networks.items()},
    }


def networks_of(system: torch.nn.Module) -> dict[str, str]:
    """``{PFNSystem argument: build_network kind}`` of a system: its non-empty ``category`` /
    ``instance`` networks, each with the ``kind`` it was built as."""
    out: dict[str, str] = {}
    for name in ("category", "instance"):
        net = getattr(system, name, None)
        if net is not None:
            out[name] = str(getattr(net, "kind", name))
    return out


def save_checkpoint(path: str | Path, *, system_state: Mapping[str, torch.Tensor],
                    config: PFNConfig, networks: Mapping[str, str],
                    optimizer: Mapping[str, Any] | None = None,
                    scheduler: Mapping[str, Any] | None = None,
                    scaler: Mapping[str, Any] | None = None,
                    step: int = 0, epoch: int = 0,
                    rng: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a training checkpoint atomically.

    Args:
        system_state: ``PFNSystem.state_dict()`` (not the DDP wrapper's).
        config: the resolved config of the run.
        networks: ``{PFNSystem argument: build_network kind}`` (see :func:`networks_of`).
        optimizer, scheduler, scaler: their ``state_dict()``.
        step: optimiser steps done; epoch: the epoch the next step belongs to.
        rng: :func:`capture_rng_state` (taken now when ``None``).
        extra: anything small and plain (numbers, strings, lists, dicts, tensors).
    """
    obj = _header("training", config, networks)
    obj.update({
        "model": {k: v.detach().cpu() for k, v in system_state.items()},
        "dtype": "float32",
        "optimizer": dict(optimizer) if optimizer is not None else None,
        "scheduler": dict(scheduler) if scheduler is not None else None,
        "scaler": dict(scaler) if scaler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "rng": dict(rng) if rng is not None else capture_rng_state(),
        "extra": dict(extra or {}),
    })
    return atomic_save(obj, path)


def save_weights(path: str | Path, system: torch.nn.Module, config: PFNConfig,
                 meta: Mapping[str, Any] | None = None, half: bool = False) -> Path:
    """Write a small inference-only file (no optimiser, no RNG), loaded by :func:`load_checkpoint`.

    ``half=True`` stores floating-point tensors as float16 (about half the size); they are
    cast back to float32 on load. Integer buffers (e.g. BatchNorm's counters) are kept.
    """
    state = {}
    for k, v in system.state_dict().items():
        v = v.detach().cpu()
        state[k] = v.half() if half and v.is_floating_point() else v
    obj = _header("weights", config, networks_of(system))
    obj.update({"model": state, "dtype": "float16" if half else "float32",
                "meta": dict(meta or {})})
    return atomic_save(obj, path)


def run_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` from :func:`load_checkpoint` without the file's header entries
    (:data:`HEADER_KEYS`): what to pass to :func:`save_weights` when a file is written anew."""
    return {k: v for k, v in meta.items() if k not in HEADER_KEYS}


# --------------------------------------------------------------------------- reading

def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint file; return its raw dict (tensors on ``map_location``).

    Raises :class:`CheckpointError` when the file is missing, unreadable or truncated, not a
    pfn-napari checkpoint, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, foreign objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read this file as a PyTorch checkpoint; it may be "
                              f"truncated or not a checkpoint ({reason[:160]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a pfn-napari checkpoint (no {FORMAT_TAG!r} tag); "
                              "pass a file written by `pfn train` or save_weights")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} (written by pfn-napari "
            f"{obj.get('pfn_napari_version', '?')}), but this pfn-napari {__version__} reads "
            f"version {FORMAT_VERSION}; use a matching pfn-napari or re-export the weights")
    missing = [k for k in ("kind", "config", "networks", "model") if k not in obj]
    if missing or obj["kind"] not in FILE_KINDS:
        raise CheckpointError(f"{path}: damaged pfn-napari checkpoint (missing {missing or 'kind'})")
    return obj


def config_of(obj: Mapping[str, Any], path: str | Path) -> PFNConfig:
    """The :class:`PFNConfig` stored in a checkpoint dict."""
    try:
        cfg = config_from_dict(obj["config"], where=f"{path} (stored config)")
        cfg.validate()
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored config does not fit this pfn-napari: {exc}") from None
    return cfg


def build_system(config: PFNConfig, networks: Mapping[str, str]) -> torch.nn.Module:
    """An untrained :class:`PFNSystem` holding ``networks`` (argument -> kind)."""
    from .model import PFNSystem, build_network

    unknown = set(networks) - {"category", "instance"}
    if unknown:
        raise CheckpointError(f"unknown networks {sorted(unknown)} (expected category, instance)")
    nets = {arg: build_network(config.model, kind=kind) for arg, kind in networks.items()}
    return PFNSystem(nets.get("category"), nets.get("instance"))


def check_finite(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the tensors of ``state`` holding NaN or infinity
    (a diverged run: its predictions would be empty without a word)."""
    bad = [k for k, v in state.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run "
                              "that wrote it diverged: use an earlier checkpoint")


def check_dtypes(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor],
                 path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first entry of ``state`` that is not a tensor,
    or that is stored as integers (or booleans) where the network holds floating-point values
    (``expected``: the network's own ``state_dict()``). Copied in, such weights would be
    rounded to whole numbers and the network would predict nothing."""
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: weight {name!r} is a {type(value).__name__}, not a "
                                  "tensor; the file is damaged or not written by pfn-napari")
        own = expected.get(name)
        if own is not None and own.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: weight tensor {name!r} is stored as {value.dtype}, "
                                  f"but the network holds {own.dtype} there; the file is "
                                  "damaged or was converted wrongly: use the original file")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, PFNConfig, dict[str, Any]]:
    """Load a training checkpoint or a weights file.

    Returns ``(system, config, meta)``: the :class:`PFNSystem` rebuilt from the stored config
    with the stored weights (float32, in eval mode, on ``map_location``), the config, and a
    dict with ``kind``, ``format_version``, ``pfn_napari_version``, ``networks``, ``dtype``,
    and for training checkpoints ``step``, ``epoch``, ``optimizer``, ``scheduler``, ``scaler``,
    ``rng``, ``extra``; for weights files the saved ``meta`` entries are merged in.
    """
    obj = read_checkpoint(path, map_location=map_location)
    cfg = config_of(obj, path)
    try:
        system = build_system(cfg, obj["networks"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot rebuild the networks {dict(obj['networks'])} "
                              f"from the stored config ({exc})") from None
    if not isinstance(obj["model"], Mapping):
        raise CheckpointError(f"{path}: damaged pfn-napari checkpoint (its 'model' entry is a "
                              f"{type(obj['model']).__name__}, not a state dict)")
    check_dtypes(obj["model"], system.state_dict(), path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in obj["model"].items()}
    check_finite(state, path)
    try:
        system.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: stored weights do not fit the network built from its "
                              f"config ({' '.join(first[:2])[:200]})") from None
    system.to(map_location).eval()
    meta: dict[str, Any] = {k: obj[k] for k in HEADER_KEYS if k in obj}
    if obj["kind"] == "training":
        for key in ("step", "epoch", "optimizer", "scheduler", "scaler", "rng", "extra"):
            meta[key] = obj.get(key)
    else:
        meta.update(obj.get("meta") or {})
    return system, cfg, meta
