"""The training loop: stages, SGD recipe, logs, checkpoints, exact resume, DDP, AMP.

Four stages (``cfg.train.stage``): the paper's two of section 3, one ablation and one beyond it:

* ``category``: the category-level network (``build_network(kind='category')``) trained with
  pixel-wise cross-entropy on the stride-8 class map. Checkpoint: ``PFNSystem(category=net)``.
  With ``cfg.train.init`` it continues the category network of that checkpoint (fine-tuning
  the one of shipped weights) instead of starting from ImageNet weights.
* ``instance``: the instance-level network, initialised from a category-stage checkpoint
  (``cfg.train.init``, via ``PFNNet.init_from``), trained with ``lambda * Lo + Ln``. The
  checkpoint holds ``PFNSystem(category=<stage-1 network, frozen>, instance=<trained>)`` so one
  file is all ``pfn predict`` needs. ``count_finetune='separate'`` ("PFN separate finetune"):
  a first phase trains the locations with the count head frozen and the count loss off; a
  second phase freezes everything but the count head and trains it alone (frozen BatchNorm
  layers keep their statistics). ``separate_schedule='full'`` (the paper's reading) gives each
  phase the whole schedule (``epochs`` or ``max_steps``, the learning rate restarting at
  ``lr`` / ``lr_new``); ``'split'`` cuts one schedule at :data:`COUNT_PHASE_SPLIT`.
* ``unified``: one network with all three heads and all three losses ("one unified network").
* ``counts`` (beyond the paper): the count head of an instance checkpoint (``cfg.train.init``)
  alone, on whole photos: each training photo at scale 1 on a ``data.whole_size`` canvas
  (flipped at random, no copy-paste), every other layer frozen and in eval mode, the counts
  gated by the category network as at test time, the count loss alone. Stage 2 teaches the
  head on crops; this teaches it the whole photos it is asked about
  (docs/experiments/training.md, "The counts on whole photos").

Recipe: SGD, momentum 0.9, weight decay 5e-4 (``optimizer='adamw'``, beyond the paper: AdamW,
:func:`make_optimizer`), ``lr`` for pre-trained layers and ``lr_new`` for new ones
(``PFNNet.param_groups()``), both multiplied by ``lr_gamma`` every ``lr_step_epochs``
epochs (``lr_policy='step'``, the paper's) or by DeepLab's ``(1 - p) ** 0.9``, ``p`` the share of
the run done (``lr_policy='poly'``: of the steps, or of ``max_minutes`` when the clock runs out
first); ``max_steps > 0`` stops after that many optimiser steps instead of ``epochs``. With
``ema > 0`` (beyond the paper) ``final.pt`` holds an exponential moving average of the trained
network's weights (:func:`ema_decay`) instead of the last step's: at a constant rate the weights
wander from step to step, and the average is less of a draw.

Exact resume: augmentation is a pure function of ``(seed, epoch, index)``
(:class:`~pfn_napari.data.loader.TrainingSet`), the order of an epoch of ``(seed, epoch)``
(:class:`~pfn_napari.data.loader.EpochSampler`), the learning rate of the step, and the
checkpoint stores the optimiser, scheduler, scaler and every RNG state of every rank, so a run
resumed from ``last.pt`` (even in the middle of an epoch) gives the same weights, bit for bit on
the CPU, as one that never stopped.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the trained network is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, nccl on GPUs), each rank
reads its share of every epoch, and only rank 0 writes logs and checkpoints; at the end each
rank's parameter hash is gathered into the final checkpoint (``extra['rank_param_sha256']``).

Outputs in ``cfg.train.out_dir``: ``config.yaml`` (resolved config), ``log.csv`` (step, epoch,
lr, loss parts, the global gradient norm before clipping ``grad/norm``, images/s), ``val.csv``
(validation metrics), ``tb/`` (TensorBoard, when installed), ``last.pt`` (every epoch or
``checkpoint_every`` steps, atomic) and ``final.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import (capture_rng_state, check_dtypes, check_finite, config_of,
                         load_checkpoint, networks_of, read_checkpoint, restore_rng_state,
                         save_checkpoint)
from .config import PFNConfig, TrainConfig, config_to_dict
from .data import open_dataset
from .data.loader import EpochSampler, TrainingSet, batch_to, collate
from .data.transforms import TrainTransform
from .errors import CheckpointError, PFNError
from .losses import total_loss
from .model import PFNSystem, build_network, load_backbone_weights
from .model.pfn import gated_counts
from .output import atomic_write_text, write_error
from .run_folder import out_dir_lock, prepare_out_dir
from .train_data import check_labels, check_val_labels, exclude_images

#: Fraction of the steps the location phase takes with ``count_finetune='separate'`` and
#: ``separate_schedule='split'``.
COUNT_PHASE_SPLIT = 0.5
#: Exponent of ``train.lr_policy='poly'`` (DeepLab's 0.9).
POLY_POWER = 0.9


# --------------------------------------------------------------------------- small helpers

@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (world 1, rank 0 when run alone)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(world, rank, local)


def rank_device(name: str, info: DistInfo) -> torch.device:
    """``auto``: CUDA when available, else CPU; under DDP on GPUs each rank takes
    ``cuda:LOCAL_RANK``."""
    if name in ("", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PFNError(f"train.device={name!r} but no CUDA GPU is available; "
                           "use --set train.device=cpu (or auto)")
        if info.enabled and name == "cuda":
            name = f"cuda:{info.local_rank}"
    return torch.device(name)


def cpu_has_bfloat16() -> bool:
    """True when this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX tiles); on
    others torch emulates it, and mixed precision is slower than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


def autocast_dtype(device: torch.device, *, float16: bool = True) -> torch.dtype | None:
    """The dtype of ``train.amp``'s mixed precision on ``device``: on CUDA float16 (with a
    GradScaler; ``float16=False``: bfloat16 where the GPU has it, for a loop without a scaler),
    bfloat16 on a CPU that has it natively (:func:`cpu_has_bfloat16`; no scaler: bfloat16 has
    float32's range), else None. Weights, optimiser state and losses stay float32; the forward
    pass (and so the backward) runs its convolutions in the lower precision."""
    if device.type == "cuda":
        if float16:
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_bfloat16():
        return torch.bfloat16
    return None


def mixed_precision(device: torch.device, dtype: torch.dtype | None):
    """The autocast region of a training step's forward pass: ``torch.autocast`` to ``dtype``
    (:func:`autocast_dtype`) on ``device``, or no region for None (float32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def lr_factor(step: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> float:
    """Step decay: ``gamma ** (epoch // step_epochs)`` with ``epoch = step // steps_per_epoch``
    (``step_epochs <= 0``: constant)."""
    if step_epochs <= 0:
        return 1.0
    return float(gamma) ** ((step // max(1, steps_per_epoch)) // step_epochs)


def poly_factor(progress: float) -> float:
    """DeepLab's "poly" policy: ``(1 - progress) ** POLY_POWER`` for ``progress`` (the share of
    the run done, clipped to [0, 1]): the rate falls smoothly to 0 at the end of the run."""
    return float(max(0.0, 1.0 - min(1.0, max(0.0, progress))) ** POLY_POWER)


def run_progress(step: int, steps: int, time_share: float = 0.0) -> float:
    """The share of a run done after ``step`` of ``steps`` steps (0: no step bound), or of its
    time budget (``time_share``, 0 without one) when that is used up faster."""
    return max(step / steps if steps > 0 else 0.0, time_share)


def ema_decay(step: int, decay: float) -> float:
    """The weight of the old average after optimiser step ``step`` (1, 2, ...): ``decay``,
    lowered for the first steps (``(1 + step) / (10 + step)``) so that the initial weights do
    not dominate a short run's average."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def phase_plan(schedule_steps: int, separate: bool, schedule: str) -> tuple[int, int]:
    """``(total steps, first step of the count phase)`` of a run whose schedule is
    ``schedule_steps`` long. Joint training: ``(n, n)``; separate with ``'split'``: the count
    phase starts at ``round(n * COUNT_PHASE_SPLIT)`` of the same ``n`` steps; with ``'full'``:
    each phase runs the whole schedule, ``(2 n, n)``."""
    if not separate:
        return schedule_steps, schedule_steps
    if schedule == "full":
        return 2 * schedule_steps, schedule_steps
    return schedule_steps, int(round(schedule_steps * COUNT_PHASE_SPLIT))


def schedule_step(step: int, split: int, restart: bool) -> int:
    """The step the learning-rate schedule reads: ``step``, or with ``restart`` (each phase its
    own schedule) the step within the count phase once it has begun (``step - split``)."""
    return step - split if restart and step >= split else step


def param_sha256(module: nn.Module) -> str:
    """Hash of every parameter's bytes, in ``named_parameters`` order."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _item(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


@contextmanager
def _rng_preserved() -> Iterator[None]:
    """Run a block (validation) without moving any global RNG of the training run."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class _Logger:
    """Rank-0 CSV + TensorBoard writer; a no-op elsewhere."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.tb = None
        self._columns: dict[str, list[str]] = {}
        if not enabled:
            return
        if resume_step is not None:  # drop rows logged after the checkpoint we resume from
            for name in ("log.csv", "val.csv"):
                self._truncate(out_dir / name, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out_dir / "tb"),
                                    purge_step=resume_step if resume_step else None)
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.is_file():
            return
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        def kept(r: list[str]) -> bool:  # complete rows up to the resumed step
            try:
                return len(r) == len(rows[0]) and int(float(r[0])) <= step
            except ValueError:
                return False

        keep = [rows[0]] + [r for r in rows[1:] if kept(r)]
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(keep)

    def row(self, name: str, values: Mapping[str, float]) -> None:
        """Append ``values`` (first key ``step``) to ``out_dir/name``; the columns are fixed by
        the file's header (or the first row written)."""
        if not self.enabled:
            return
        path = self.out_dir / name
        try:
            if name not in self._columns:
                if path.is_file() and path.stat().st_size > 0:
                    with path.open(newline="") as fh:
                        self._columns[name] = next(csv.reader(fh))
                else:
                    self._columns[name] = list(values)
                    with path.open("w", newline="") as fh:
                        csv.writer(fh).writerow(self._columns[name])
            cols = self._columns[name]
            with path.open("a", newline="") as fh:
                csv.writer(fh).writerow([_fmt(values.get(c, "")) for c in cols])
        except OSError as exc:
            raise write_error(path, exc) from None
        if self.tb is not None:
            step = int(values["step"])
            prefix = "val" if name.startswith("val") else "train"
            for key, v in values.items():
                if key not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{key}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# --------------------------------------------------------------------------- model setup

def _count_head_params(net: nn.Module) -> list[nn.Parameter]:
    """Parameters of the instance-number head (the model's ``count_head`` module, or
    ``count_parameters()`` when it offers one)."""
    if hasattr(net, "count_parameters"):
        return list(net.count_parameters())
    head = getattr(net, "count_head", None)
    if isinstance(head, nn.Module):
        return list(head.parameters())
    params = [p for n, p in net.named_parameters() if n.split(".")[0].startswith("count")]
    if not params:
        raise PFNError("count_finetune='separate' needs a network with a count head "
                       f"({type(net).__name__} has none)")
    return params


def _set_phase(net: nn.Module, phase: str, frozen: tuple[str, ...] = ()) -> None:
    """Which parameters train. ``all``: every one; ``locations``: all but the count head;
    ``counts``: only the count head (BatchNorm layers outside it keep their statistics).
    Parameters whose name starts with one of ``frozen`` never train."""
    count_ids = {id(p) for p in _count_head_params(net)} if phase != "all" else set()
    for name, p in net.named_parameters():
        if frozen and name.startswith(tuple(frozen)):
            p.requires_grad_(False)
        elif phase == "all":
            p.requires_grad_(True)
        elif phase == "locations":
            p.requires_grad_(id(p) not in count_ids)
        else:
            p.requires_grad_(id(p) in count_ids)


def _train_mode(net: nn.Module, phase: str, frozen_eval: bool = False) -> None:
    """Training mode for ``phase``. ``frozen_eval`` (stage 'counts'): every module but the count
    head in eval mode, as at test time (no dropout, fixed BatchNorm statistics); otherwise in
    phase ``counts`` only the BatchNorm layers without a trained parameter are."""
    if frozen_eval:
        net.eval()
        head = getattr(net, "count_head", None)
        if isinstance(head, nn.Module):
            head.train()
        return
    net.train()
    if phase == "counts":  # frozen layers: BatchNorm statistics fixed too
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if not any(p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()


def _init_system(cfg: PFNConfig) -> PFNSystem:
    """The system of ``cfg.train.init``, checked: it holds a category network trained with
    this run's model settings and classes (else one :class:`CheckpointError` naming the file)."""
    cat_system, cat_cfg, _ = load_checkpoint(cfg.train.init)
    if getattr(cat_system, "category", None) is None:
        raise CheckpointError(f"{cfg.train.init}: holds no category network; --init needs a "
                              "checkpoint of stage 'category' or 'instance'")
    a, b = cat_cfg.model.backbone, cfg.model.backbone
    if a != b:
        raise CheckpointError(f"{cfg.train.init}: its category network is a {a!r}, but this run's "
                              f"is a {b!r} (model.backbone); use the same model settings")
    for field in ("num_classes", "ceil_mode"):
        a, b = getattr(cat_cfg.model, field), getattr(cfg.model, field)
        if a != b:
            raise CheckpointError(f"{cfg.train.init}: was trained with model.{field}={a!r}, but this "
                                  f"run has model.{field}={b!r}; use the same model settings")
    if tuple(cat_cfg.data.classes) != tuple(cfg.data.classes):
        raise CheckpointError(f"{cfg.train.init}: trained on classes {list(cat_cfg.data.classes)}, "
                              f"this run on {list(cfg.data.classes)}")
    return cat_system


def _build_networks(cfg: PFNConfig, note, resuming: bool = False
                    ) -> tuple[nn.Module, nn.Module, str]:
    """``(system, trained network, kind)`` for the stage. ``resuming``: the weights will come
    from the checkpoint, so neither backbone weights nor ``train.init`` are read."""
    stage = cfg.train.stage
    if stage in ("category", "unified"):
        net = build_network(cfg.model, kind=stage)
        if not resuming and stage == "category" and cfg.train.init:
            net.load_state_dict(_init_system(cfg).category.state_dict())
            note(f"category network continued from the one in {cfg.train.init}")
        elif not resuming:  # Lite0 falls back to the packaged ImageNet file, VGG/AlexNet warn
            used = load_backbone_weights(net, cfg.train.backbone_weights or None)
            note(f"backbone weights: {used or 'none (He init)'}")
        system = PFNSystem(net, None) if stage == "category" else PFNSystem(None, net)
        return system, net, stage
    # stages instance and counts: both networks, the category one frozen
    if resuming:
        category = build_network(cfg.model, kind="category")
        net = build_network(cfg.model, kind="instance")
    else:
        category, net = _stage2_networks(cfg, note)
    category.eval()
    for p in category.parameters():
        p.requires_grad_(False)
    return PFNSystem(category=category, instance=net), net, stage


def _stage2_networks(cfg: PFNConfig, note) -> tuple[nn.Module, nn.Module]:
    """``(category, instance)`` networks of stage 'instance' or 'counts' from ``train.init``:
    stage 'instance' initialises its network from a category checkpoint or continues the one of
    an instance checkpoint; stage 'counts' needs an instance network with a count head."""
    stage, init = cfg.train.stage, cfg.train.init
    if not init:
        raise PFNError(("stage 'counts' continues the count head of an instance-stage "
                        "checkpoint: pass --init runs/instance/final.pt (train.init)")
                       if stage == "counts" else
                       ("stage 'instance' starts from a category-stage checkpoint: pass "
                        "--init runs/category/final.pt (train.init)"))
    cat_system = _init_system(cfg)
    category = cat_system.category
    net = build_network(cfg.model, kind="instance")
    previous = getattr(cat_system, "instance", None)
    if stage == "counts" and getattr(previous, "count_head", None) is None:
        raise CheckpointError(f"{init}: holds no instance network with a count head; "
                              "stage 'counts' starts from a checkpoint of stage 'instance'")
    if previous is not None:  # an instance checkpoint: continue its instance network
        _continue_instance(net, previous, init)
        note(f"instance network continued from the one in {init}")
    else:
        net.init_from(category.state_dict())
        note(f"instance network initialised from {init}")
    return category, net


def _continue_instance(net: nn.Module, previous: nn.Module, where: str) -> None:
    """Copy every tensor of an instance network of an earlier run into ``net`` (a stage that
    fine-tunes part of it, e.g. the count head with ``train.frozen``); shapes must match."""
    own, theirs = net.state_dict(), previous.state_dict()
    bad = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{where}: its instance network differs from this run's "
                              f"(e.g. {bad[0]!r}); use the same model settings")
    net.load_state_dict(theirs, strict=False)


def make_optimizer(groups: list[dict[str, Any]], t: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``t.optimizer`` over parameter ``groups`` (each with its ``lr``):
    SGD with ``t.momentum`` (the paper's), or AdamW with betas ``(t.momentum, 0.999)``, both
    with weight decay ``t.weight_decay`` (AdamW's decoupled: each step shrinks a weight by
    ``lr * weight_decay``)."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999),
                                 weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _optimizer(net: nn.Module, cfg: PFNConfig) -> torch.optim.Optimizer:
    pretrained, new = net.param_groups()
    t = cfg.train
    groups = [{"params": list(pretrained), "lr": t.lr, "name": "pretrained"},
              {"params": list(new), "lr": t.lr_new, "name": "new"}]
    return make_optimizer([g for g in groups if g["params"]], t)


# --------------------------------------------------------------------------- validation

@torch.no_grad()
def validation_metrics(system: nn.Module, cfg: PFNConfig, device: torch.device, note,
                       max_images: int | None = None) -> dict[str, float]:
    """Metrics of ``system`` on ``cfg.data.val`` (split ``cfg.data.val_split``), in percent,
    through the :class:`~pfn_napari.predictor.Predictor` (no CRF) and
    :func:`~pfn_napari.producers.evaluate_dataset`, as ``pfn evaluate`` computes them.

    ``mIoU`` of the category map always; ``APr@0.5`` and ``APr_vol`` (grouping with
    ``cfg.grouping``) when the system predicts instances.
    """
    data = open_dataset(cfg.data.val, cfg.data.val_split, cfg.data.classes)
    return dataset_metrics(system, cfg, device, data, max_images)


@torch.no_grad()
def dataset_metrics(system: nn.Module, cfg: PFNConfig, device: torch.device, data: Any,
                    max_images: int | None = None) -> dict[str, float]:
    """:func:`validation_metrics` on an opened dataset ``data`` (its own classes: the model's
    classes are matched to them by name)."""
    from .inference import PFNModel
    from .predictor import Predictor
    from .producers import evaluate_dataset, model_producer

    was_training = system.training
    system.eval()
    predictor = Predictor(PFNModel(system=system, config=cfg, device=device), crf=False)
    instances = system_has_instances(system)
    try:
        result = evaluate_dataset(data, model_producer(predictor, data,
                                                       class_map_only=not instances),
                                  limit=max_images, progress=False)
    finally:
        system.train(was_training)
    metrics = {"mIoU": float(result.miou)}
    if instances:
        metrics["APr@0.5"] = float(result.ap_r.get("0.5", float("nan")))
        metrics["APr_vol"] = float(result.ap_r_vol)
    return metrics


def system_has_instances(system: nn.Module) -> bool:
    """True when ``system`` predicts locations and counts (stage 2 or unified)."""
    return getattr(system, "instance", None) is not None


# --------------------------------------------------------------------------- the run

def train(cfg: PFNConfig, resume: str | os.PathLike | None = None, progress: bool = True,
          overwrite: bool = True) -> Path:
    """Train one stage; return the path of the final checkpoint (``out_dir/final.pt``).

    ``overwrite``: what to do when ``out_dir`` already holds a run (``final.pt``, ``last.pt``,
    ``log.csv`` or ``val.csv``) and ``resume`` is not given: ``True`` deletes those files first
    (no log is appended to), ``False`` raises :class:`PFNError` before any work (``pfn train``
    passes ``False`` unless ``--overwrite``).

    ``resume``: a ``last.pt`` / ``final.pt`` of the same stage and model config; training
    continues from its step with its optimiser, schedule and RNG states (``cfg`` may change
    ``max_steps``, ``epochs``, logging and output settings, not the model).
    Under ``torchrun`` this runs data-parallel; call it on every rank.
    """
    info = dist_info()
    own_group = _init_process_group(info, cfg.train.device)
    try:
        with out_dir_lock(Path(cfg.train.out_dir), info.main):
            run = _setup_run(cfg, resume, info, overwrite)
            last_parts = _run_steps(run, progress)
            return _finish(run, last_parts)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _init_process_group(info: DistInfo, device: str) -> bool:
    """Join the ``torchrun`` job (nccl for CUDA training, else gloo); ``True`` when this call
    created the process group (and so destroys it at the end)."""
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if (torch.cuda.is_available() and device in ("auto", "cuda")) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    return True


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The steps of a run: how many, how many per epoch, and which phase each belongs to."""

    steps_per_epoch: int
    total: int  # steps of the whole run (both phases)
    split: int  # first step of the count phase (``total`` when training jointly)
    separate: bool  # count_finetune='separate' in stage 'instance'
    restart: bool  # the learning-rate schedule restarts at ``split`` (separate_schedule='full')
    counts_only: bool = False  # stage 'counts': the count head alone, every step

    def phase_of(self, step: int) -> str:
        """``all`` (joint training), ``locations`` or ``counts`` (see :func:`_set_phase`)."""
        if self.counts_only:
            return "counts"
        if not self.separate:
            return "all"
        return "locations" if step < self.split else "counts"


@dataclasses.dataclass
class _Clock:
    """The share of ``train.max_minutes`` this process has trained (rank 0's clock, set by
    :func:`_out_of_time` after each step; 0 without a time budget): what ``lr_policy='poly'``
    reads besides steps."""

    share: float = 0.0


def _schedule(t: TrainConfig, plan: _Plan, step: int, time_share: float) -> float:
    """The learning-rate factor of ``step`` under ``t.lr_policy`` (``step``: :func:`lr_factor`;
    ``poly``: :func:`poly_factor` of the share of the schedule done, by steps or by the clock).
    With ``separate_schedule='full'`` each phase is a schedule of its own."""
    s = schedule_step(step, plan.split, plan.restart)
    if t.lr_policy == "poly":
        steps = plan.split if plan.restart else plan.total
        return poly_factor(run_progress(s, steps, 0.0 if plan.restart else time_share))
    return lr_factor(s, plan.steps_per_epoch, t.lr_step_epochs, t.lr_gamma)


@dataclasses.dataclass
class _Run:
    """What :func:`_setup_run` builds and the step loop drives; ``step`` counts optimiser
    steps taken (restored on resume)."""

    cfg: PFNConfig
    info: DistInfo
    device: torch.device
    out_dir: Path
    note: Callable[[str], None]
    plan: _Plan
    train_set: TrainingSet
    sampler: EpochSampler
    loader: DataLoader
    system: nn.Module  # PFNSystem: what the checkpoints hold
    net: nn.Module  # the network being trained (a part of ``system``)
    kind: str  # its kind: category, instance or unified
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler  # enabled with float16 autocast (CUDA) only
    amp_dtype: torch.dtype | None  # the autocast dtype of train.amp on this device, or None
    base_lrs: list[float]
    clock: _Clock = dataclasses.field(default_factory=_Clock)
    logger: _Logger | None = None
    step: int = 0
    # train.ema > 0: the moving average of ``net.state_dict()`` (its floating tensors)
    average: dict[str, torch.Tensor] | None = None
    # the global gradient norm of each step of this process, before clipping (grad_note)
    grad_norms: list[float] = dataclasses.field(default_factory=list)

    @property
    def gate_counts(self) -> bool:
        """Counts of the density head gated by the frozen category network (stages instance
        and counts)."""
        return (self.kind in ("instance", "counts") and self.cfg.model.count_gate
                and self.cfg.model.count_head == "density" and self.system.category is not None)


def _setup_run(cfg: PFNConfig, resume: str | os.PathLike | None, info: DistInfo,
               overwrite: bool) -> _Run:
    """Everything before the first step, in an order that keeps resume exact: check the
    checkpoint and the output folder, seed, build the data and the networks, restore the
    training state, write ``config.yaml``, open the logs, seed (or restore) each rank's RNG."""
    t = cfg.train
    out_dir = Path(t.out_dir)
    device = rank_device(t.device, info)
    note = _note_function(info.main)
    ckpt = _read_resume_checkpoint(resume, cfg) if resume else None
    prepare_out_dir(out_dir, claim=not resume, overwrite=overwrite, main=info.main, note=note)
    seed_everything(t.seed)  # the same initial weights on every rank
    train_set, sampler, loader, plan = _build_data(cfg, info, device, note)
    check_val_labels(cfg)
    system, net, kind = _build_networks(cfg, note, resuming=ckpt is not None)
    system.to(device)
    if t.channels_last:
        system.to(memory_format=torch.channels_last)
    if t.frozen:
        _freeze(net, t.frozen, kind, note)
    optimizer = _optimizer(net, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clock = _Clock()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(
        t, plan, step, clock.share))
    dtype = autocast_dtype(device) if t.amp else None
    if t.amp and dtype is None:
        note("train.amp ignored: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or "
             "AMX), where mixed precision would be slower than float32")
    elif dtype is not None:
        note(f"mixed precision: the forward pass in {str(dtype).replace('torch.', '')} on "
             f"{device.type} (weights and losses in float32)")
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    if t.count_finetune == "separate" and kind != "instance":
        note(f"train.count_finetune=separate applies to stage 'instance' only; stage {kind!r} "
             + ("trains the count head alone" if kind == "counts" else "trains jointly"))
    run = _Run(cfg=cfg, info=info, device=device, out_dir=out_dir, note=note, plan=plan,
               train_set=train_set, sampler=sampler, loader=loader, system=system, net=net,
               kind=kind, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               amp_dtype=dtype, base_lrs=base_lrs, clock=clock)
    if ckpt is not None:
        _restore_training_state(run, ckpt, resume)
    if t.ema > 0:
        run.average = _start_average(run, ckpt)
    if run.step >= plan.total:
        note(f"nothing to do: step {run.step} >= {plan.total} steps")
    if info.main:
        atomic_write_text(out_dir / "config.yaml",
                          yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    run.logger = _Logger(out_dir, info.main, run.step if ckpt is not None else None)
    _note_plan(run)
    if ckpt is not None:
        _restore_rank_rng(ckpt, info, note)
    else:  # a rank-specific dropout stream
        torch.manual_seed(t.seed + 1000003 * info.rank)
    return run


def note_line(msg: str) -> None:
    """One line ``pfn train: msg`` on stderr from rank 0 (kept clear of a progress bar)."""
    if dist_info().main:
        tqdm.write(f"pfn train: {msg}", file=sys.stderr)


def _note_function(main: bool) -> Callable[[str], None]:
    """``note(msg)``: one line ``pfn train: msg`` on stderr from rank 0 (kept clear of the
    progress bar); silent on the other ranks."""
    def note(msg: str) -> None:
        if main:
            tqdm.write(f"pfn train: {msg}", file=sys.stderr)

    return note


def _read_resume_checkpoint(resume: str | os.PathLike, cfg: PFNConfig) -> dict[str, Any]:
    """The training checkpoint to resume from, checked against this run before anything is
    built: same stage, model, classes and optimiser (a file from before ``train.optimizer``
    existed reads as SGD, which trained it), finite weights."""
    t = cfg.train
    ckpt = read_checkpoint(resume)
    if ckpt["kind"] != "training":
        raise CheckpointError(f"{resume}: a weights-only file cannot be resumed; pass last.pt")
    stored = config_of(ckpt, resume)
    if stored.train.stage != t.stage:
        raise CheckpointError(f"{resume}: a checkpoint of stage {stored.train.stage!r}, but "
                              f"this run is stage {t.stage!r}")
    if stored.model != cfg.model or stored.data.classes != cfg.data.classes:
        raise CheckpointError(f"{resume}: stored model config differs from this run's; resume "
                              "without --config (the stored config is used) or with the same one")
    if stored.train.optimizer != t.optimizer:  # its optimiser state cannot go on in another
        raise CheckpointError(f"{resume}: trained with train.optimizer="
                              f"{stored.train.optimizer!r}, this run has {t.optimizer!r}; resume "
                              "with the same optimiser")
    check_finite(ckpt["model"], resume)
    return ckpt


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy's legacy global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _build_data(cfg: PFNConfig, info: DistInfo, device: torch.device, note
                ) -> tuple[TrainingSet, EpochSampler, DataLoader, _Plan]:
    """The training set, this rank's sampler, its loader and the step plan of the run."""
    t = cfg.train
    dataset = open_dataset(cfg.data.train, cfg.data.train_split, tuple(cfg.data.classes))
    if cfg.data.train_exclude:
        dataset = exclude_images(dataset, cfg, note)
    if len(dataset):  # (no images at all: refused below, as too few for a batch)
        check_labels(dataset, cfg, "train")
    d, whole = cfg.data, t.stage == "counts"  # stage counts: whole photos at scale 1
    size, lo, hi = (d.whole_size, 1.0, 1.0) if whole else (d.crop_size, d.scale_min, d.scale_max)
    transform = TrainTransform(size, lo, hi, d.flip, count_share=d.count_targets == "share")
    train_set = TrainingSet(dataset, transform, cfg.model.num_classes, cfg.model.encoding,
                            seed=t.seed, copy_paste=0.0 if whole else d.copy_paste)
    sampler = EpochSampler(len(train_set), info.world, info.rank, seed=t.seed)
    spe = len(sampler) // t.batch_size  # steps per epoch (incomplete batches dropped)
    if spe < 1:
        raise PFNError(f"data.train={cfg.data.train!r} has {len(train_set)} images: too few for "
                       f"batch {t.batch_size} x {info.world} process(es); lower train.batch_size")
    separate = t.stage == "instance" and t.count_finetune == "separate"
    total, split = phase_plan(t.max_steps if t.max_steps > 0 else t.epochs * spe, separate,
                              t.separate_schedule)
    plan = _Plan(steps_per_epoch=spe, total=total, split=split, separate=separate,
                 restart=separate and t.separate_schedule == "full", counts_only=whole)
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, collate_fn=collate, drop_last=True,
                        pin_memory=device.type == "cuda",
                        # own generator: building an iterator must not move the global RNG
                        generator=torch.Generator().manual_seed(t.seed))
    return train_set, sampler, loader, plan


def _freeze(net: nn.Module, frozen: tuple[str, ...], kind: str, note) -> None:
    """Stop the parameters named by the ``train.frozen`` prefixes from training."""
    _set_phase(net, "all", frozen)
    names = [n for n, p in net.named_parameters() if n.startswith(tuple(frozen))]
    if not names:
        raise PFNError(f"train.frozen={list(frozen)}: no parameter of the {kind} network "
                       "starts with these prefixes")
    note(f"frozen: {len(names)} parameter tensors ({', '.join(frozen)})")


def _restore_training_state(run: _Run, ckpt: Mapping[str, Any], resume) -> None:
    """Weights, optimiser, scheduler, scaler and step of the checkpoint we resume from."""
    check_dtypes(ckpt["model"], run.system.state_dict(), resume)
    try:
        run.system.load_state_dict(ckpt["model"], strict=True)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{resume}: cannot restore the training state "
                              f"({str(exc).splitlines()[0][:160]})") from None
    raw = (ckpt.get("extra") or {}).get("raw_weights")
    if raw is not None:  # a final.pt holding the weight average: continue from the last step's
        run.net.load_state_dict(raw)
    run.step = int(ckpt["step"])
    run.note(f"resumed from {resume} at step {run.step}")


def _start_average(run: _Run, ckpt: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """The weight average of ``train.ema``: the checkpoint's when resuming (the current
    weights, said in a note, when it was saved without one), else the initial weights."""
    stored = ((ckpt or {}).get("extra") or {}).get("ema")
    if stored is not None:
        return {k: v.to(run.device) for k, v in stored.items()}
    if ckpt is not None:
        run.note(f"train.ema={run.cfg.train.ema:g}: the checkpoint has no weight average; it "
                 f"starts from the weights of step {run.step}")
    return {k: v.detach().clone() for k, v in run.net.state_dict().items()}


@torch.no_grad()
def _update_average(run: _Run) -> None:
    """Move the weight average towards the weights after step ``run.step``."""
    d = ema_decay(run.step, run.cfg.train.ema)
    for key, value in run.net.state_dict().items():
        avg = run.average[key]
        if avg.is_floating_point():
            avg.mul_(d).add_(value.detach(), alpha=1.0 - d)
        else:
            avg.copy_(value)


def _restore_rank_rng(ckpt: Mapping[str, Any], info: DistInfo, note) -> None:
    """This rank's RNG states as saved (rank 0's when the world size changed)."""
    per_rank_rng = (ckpt.get("extra") or {}).get("rng_per_rank")
    if per_rank_rng and len(per_rank_rng) == info.world:
        restore_rng_state(per_rank_rng[info.rank])
    else:
        if info.enabled:
            note("checkpoint has no RNG state per rank for this world size: "
                 "continuing with rank 0's")
        restore_rng_state(ckpt["rng"])


def _note_plan(run: _Run) -> None:
    t, plan = run.cfg.train, run.plan
    d = run.cfg.data
    if plan.counts_only:
        phases = (f", the count head alone on whole photos ({d.whole_size}x{d.whole_size} canvas "
                  "at scale 1, the rest frozen)")
    elif plan.separate:
        phases = (f", count head trained separately from step {plan.split}"
                  + (" (its own schedule: the learning rate restarts there)" if plan.restart
                     else ""))
    else:
        phases = ""
    run.note(f"stage {t.stage}: {len(run.train_set)} images, {plan.steps_per_epoch} steps/epoch, "
             f"{plan.total} steps, batch {t.batch_size} x {run.info.world}, device {run.device}"
             f"{phases}")


# --------------------------------------------------------------------------- the steps

def _run_steps(run: _Run, progress: bool) -> dict[str, float]:
    """Train from ``run.step`` to the end of the plan (or until ``train.max_minutes``), logging,
    checkpointing and validating on the way; return the loss parts of the last step."""
    t = run.cfg.train
    spe, total = run.plan.steps_per_epoch, run.plan.total
    bar = tqdm(total=total, initial=run.step, disable=not (progress and run.info.main),
               desc=f"pfn train {t.stage}", unit="step", dynamic_ncols=True)
    window_images, window_time = 0, 0.0
    last_parts: dict[str, float] = {}
    flag = torch.zeros(1, device=run.device)  # 1 on a rank whose loss is not finite
    started = time.perf_counter()
    phase: str | None = None
    model: nn.Module = run.net  # DDP-wrapped under torchrun, rebuilt when the phase changes
    try:
        while run.step < total:
            epoch, skip = divmod(run.step, spe)
            run.train_set.set_epoch(epoch)
            run.sampler.set_epoch(epoch, skip * t.batch_size)
            tic = time.perf_counter()
            for batch in run.loader:
                if run.plan.phase_of(run.step) != phase:
                    phase = run.plan.phase_of(run.step)
                    model = _enter_phase(run, phase)
                _train_mode(run.net, phase, frozen_eval=run.plan.counts_only)
                lrs, loss, parts, n_img = _train_step(run, model, batch, phase, epoch, flag)
                now = time.perf_counter()
                window_images += n_img * run.info.world
                window_time += now - tic
                tic = now
                last_parts = {"loss": _item(loss), **{k: _item(v) for k, v in parts.items()
                                                      if k not in ("loss", "total")}}
                if run.step < total and _out_of_time(run, started):
                    run.note(f"train.max_minutes={t.max_minutes:g} reached at step {run.step}")
                    total = run.step  # log this step, save, stop
                if run.step % max(1, t.log_every) == 0 or run.step == total:
                    ips = window_images / max(window_time, 1e-9)
                    run.logger.row("log.csv", {"step": run.step, "epoch": epoch, "lr": lrs[0],
                                               "lr_new": lrs[-1], **last_parts,
                                               "images_per_s": ips})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last_parts.items() if "/" not in k}
                                    | {"img/s": f"{ips:.1f}"}, refresh=False)
                    window_images, window_time = 0, 0.0
                bar.update(1)
                if t.checkpoint_every > 0 and run.step % t.checkpoint_every == 0 \
                        and run.step < total:
                    _save(run, "last.pt", run.step // spe)
                if run.step % spe == 0:  # end of an epoch
                    if t.checkpoint_every <= 0 and run.step < total:
                        _save(run, "last.pt", run.step // spe)
                    if t.val_every > 0 and (run.step // spe) % t.val_every == 0 \
                            and run.step < total:
                        _validate_and_log(run, run.step // spe)
                    break  # next epoch: new permutation
                if run.step >= total:
                    break
    finally:
        bar.close()
    return last_parts


def _enter_phase(run: _Run, phase: str) -> nn.Module:
    """Set which parameters train in ``phase``; the module to call (a new DDP wrapper under
    torchrun, since the set of trained parameters changed)."""
    _set_phase(run.net, phase, run.cfg.train.frozen)
    model = run.net
    if run.info.enabled:
        model = nn.parallel.DistributedDataParallel(
            run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.plan.separate:
        run.note(f"step {run.step}: training "
                 + ("the locations (count head frozen)" if phase == "locations"
                    else "the count head only"))
    return model


def _train_step(run: _Run, model: nn.Module, batch: dict[str, torch.Tensor], phase: str,
                epoch: int, flag: torch.Tensor
                ) -> tuple[list[float], torch.Tensor, dict[str, Any], int]:
    """One optimiser step on ``batch`` (``run.step`` advances by one); returns the learning
    rates of the step, the loss, its parts and the number of images of this rank."""
    t = run.cfg.train
    batch = batch_to(batch, run.device)
    loss_cfg = (dataclasses.replace(run.cfg.loss, count_weight=0.0) if phase == "locations"
                else run.cfg.loss)
    with mixed_precision(run.device, run.amp_dtype):
        out = model(batch["image"])  # NetOutputs on the stride-8 grid
        if run.gate_counts:  # counts where the frozen category network sees the class
            with torch.no_grad():
                seg = run.system.category(batch["image"]).seg_logits  # (B, C+1, h, w)
            out.counts = gated_counts(out.count_density, seg)  # (B, C)
        loss, parts = total_loss(out, batch, loss_cfg, run.kind)  # in float32
    _stop_unless_finite(run, loss, parts, epoch, flag)
    lrs = [g["lr"] for g in run.optimizer.param_groups]  # the lr of this step
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)  # true gradients for the norm (a no-op unless float16)
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # global, before clipping
    if t.grad_clip > 0:  # the same arithmetic as clip_grad_norm_
        torch.nn.utils.clip_grads_with_norm_(params, t.grad_clip, norm)
    run.grad_norms.append(float(norm))
    parts = {**parts, "grad/norm": norm}
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    if run.average is not None:
        _update_average(run)
    return lrs, loss, parts, batch["image"].shape[0]


def _stop_unless_finite(run: _Run, loss: torch.Tensor, parts: Mapping[str, Any], epoch: int,
                        flag: torch.Tensor) -> None:
    """Raise :class:`PFNError` naming the step and the loss parts when the loss of any rank is
    not finite (all ranks stop together)."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if run.info.enabled:
        flag.fill_(0.0 if finite else 1.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        finite = flag.item() == 0.0
    if finite:
        return
    bad = [k for k, v in parts.items() if not math.isfinite(_item(v))]
    last = run.out_dir / "last.pt"
    raise PFNError(
        f"non-finite loss at step {run.step + 1} (epoch {epoch}): "
        f"{', '.join(bad) or 'loss'} = "
        f"{', '.join(str(_item(parts[k])) for k in bad) or _item(loss)}"
        f"; lower train.lr / train.lr_new, set train.grad_clip, or check the data"
        + (f"; last good checkpoint: {last}" if last.is_file() else ""))


def _out_of_time(run: _Run, started: float) -> bool:
    """``train.max_minutes`` reached (rank 0's clock decides, so all ranks stop together and
    read the same learning rate); sets ``run.clock.share``, the share of it used."""
    max_minutes = run.cfg.train.max_minutes
    if max_minutes <= 0:
        return False
    share = (time.perf_counter() - started) / 60.0 / max_minutes
    if run.info.enabled:
        shared = torch.tensor([share], dtype=torch.float64, device=run.device)
        dist.broadcast(shared, src=0)
        share = float(shared.item())
    run.clock.share = share
    return share >= 1.0


# --------------------------------------------------------------------------- checkpoints, the end

def _save(run: _Run, name: str, epoch: int, extra: dict[str, Any] | None = None) -> Path | None:
    """Write ``out_dir/name`` (rank 0) with the training state and every rank's RNG states
    (gathered from all ranks, so every rank must call this)."""
    rng = capture_rng_state()
    states = [None] * run.info.world
    if run.info.enabled:
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    if not run.info.main:
        return None
    return save_checkpoint(
        run.out_dir / name, system_state=run.system.state_dict(), config=run.cfg,
        networks=networks_of(run.system), optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        step=run.step, epoch=epoch, rng=rng,
        extra={"rng_per_rank": states, "world_size": run.info.world,
               **({"ema": _cpu(run.average)} if run.average is not None else {}),
               **(extra or {})})


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _validate_and_log(run: _Run, epoch: int) -> None:
    """Validation metrics (rank 0, global RNGs untouched) into ``val.csv``; the other ranks
    wait for it."""
    if run.info.main:
        with _rng_preserved():
            try:
                metrics = validation_metrics(_unwrap(run.system), run.cfg, run.device, run.note)
            except PFNError as exc:
                run.note(f"validation skipped: {exc}")
                metrics = {}
        if metrics:
            run.logger.row("val.csv", {"step": run.step, "epoch": epoch, **metrics})
            run.note(f"validation at step {run.step}: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    if run.info.enabled:
        dist.barrier()


def _finish(run: _Run, last_parts: dict[str, float]) -> Path:
    """The end: every rank's parameter hash, ``last.pt`` and ``final.pt``, a last validation."""
    hashes = [param_sha256(run.net)]
    if run.info.enabled:
        gathered: list[Any] = [None] * run.info.world
        dist.all_gather_object(gathered, hashes[0])
        hashes = [str(h) for h in gathered]
        if len(set(hashes)) != 1:
            run.note(f"WARNING: ranks ended with different weights: {hashes}")
    _set_phase(run.net, "all", run.cfg.train.frozen)
    extra = {"rank_param_sha256": hashes, "final_loss": last_parts,
             "base_lrs": run.base_lrs, "steps_per_epoch": run.plan.steps_per_epoch}
    epoch = run.step // run.plan.steps_per_epoch
    _save(run, "last.pt", epoch, extra)
    final = run.out_dir / "final.pt"
    if run.average is not None:  # final.pt: the average; its last-step weights kept for resume
        raw = {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}
        run.net.load_state_dict(run.average)
        extra = {**extra, "raw_weights": raw}
        run.note(f"final.pt holds the moving average of the weights (train.ema="
                 f"{run.cfg.train.ema:g}); last.pt the last step's")
    _save(run, "final.pt", epoch, extra)
    _validate_and_log(run, epoch)
    run.logger.close()
    if run.info.main:
        line = grad_note(run.grad_norms, run.cfg.train.grad_clip)
        if line:
            run.note(line)
        run.note(f"done: {run.step} steps; final checkpoint {final}")
    return final


def grad_note(norms: list[float], clip: float) -> str:
    """One line when ``train.grad_clip`` cut most steps' gradients (``norms``: each step's
    global norm before clipping), or ``""``: then the clip, not the learning rate, sets how far
    a step goes (a step moves the weights by ``lr * clip / norm`` of the gradient), so the
    rates in the config overstate the step (docs/training.md)."""
    if clip <= 0 or not norms:
        return ""
    clipped = sum(n > clip for n in norms)
    if clipped * 2 <= len(norms):
        return ""
    median = float(np.median(norms))
    return (f"the gradient norm was above train.grad_clip={clip:g} on {clipped} of "
            f"{len(norms)} steps (median {median:.3g}): those steps were scaled down to norm "
            f"{clip:g}, about {clip / median:.2g}x the rates' step (log.csv column grad/norm)")
