"""Fine-tune a trained PFN on a few corrected images, in minutes: ``pfn finetune`` and napari.

Where :mod:`pfn_napari.train` trains one network per stage from ImageNet or stage-1 weights,
this continues a complete model (category + instance networks, or a unified one) on the
user's own data. The shipped recipe trains the category network alone (cross-entropy) and
keeps the instance network, whose forward pass is then skipped (:func:`_objective`): trained on
a few crops for minutes, the location streams and the count head got worse on unseen photos
(docs/finetune.md). A recipe that trains them gets one step over both networks: the
category loss, the location streams' and the count head's (``loc_weight Lo + count_weight
Ln``, the counts gated by the category network's map, as the model is read at test time) on
the same batch; the count channels of the classes the model had stay (:func:`count_rows_held`).

Classes (:func:`plan_classes`): the data's, unless ``classes`` names them. A class the model has
keeps its output channel; a class it lacks gets a new channel in the category head and in the
count head (:func:`add_classes`): the background channel's fc8 weights with the bias lowered by
:data:`NEW_CLASS_BIAS` (the new class starts rare and the category map unchanged) and the mean
of the count channels. Classes the data does not label must not be unlearnt: a pixel the model
itself gives, with probability above :data:`KEEP_PROB`, to a class the data does not label is
void in the category loss (the data's "background" there is only unlabelled), and the count
loss reads the labelled classes only.

Time: ``minutes`` of wall clock for the training steps (evaluations and saving come on top); a
resumed run continues the budget where it stopped. The recipe (crop, batch, learning rates,
frozen layers) is ``configs/finetune-cpu.yaml`` (docs/finetune.md says how it was chosen).

Outputs in ``out``: ``last.pt`` (a training checkpoint: resumable, exactly), ``final.pt`` (a
weights file with the card in its ``meta``), ``README.md`` (the card: images, classes, steps,
minutes, before/after numbers on held-back images), ``config.yaml``, ``log.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import (capture_rng_state, check_finite, config_of, load_checkpoint,
                         networks_of, read_checkpoint, restore_rng_state, save_checkpoint,
                         save_weights)
from .config import (VOID, ConfigError, PFNConfig, config_from_dict, config_to_dict,
                     resolve_config_path)
from .data import normalise_class_name, open_dataset
from .data.folder import VAL_EVERY
from .data.loader import EpochSampler, TrainingSet, batch_to, collate
from .data.transforms import TrainTransform
from .errors import CheckpointError, DatasetError, OutputError, PFNError
from .losses import total_loss
from .model import PFNSystem
from .model.pfn import gated_counts
from .output import atomic_write_text, check_output_dir, remove_stale_temporaries
from .run_folder import out_dir_lock
from .train import (autocast_dtype, dataset_metrics, make_optimizer, mixed_precision,
                    poly_factor, run_progress, seed_everything)
from .train_data import check_labels, data_classes, held_back_indices

#: The shipped fine-tuning recipe (``configs/finetune-cpu.yaml``).
RECIPE = "finetune-cpu"
#: A new class's fc8 bias: the background's minus this (its probability starts ~e^-6 of it).
NEW_CLASS_BIAS = 6.0
#: A pixel the model gives to a class the data does not label with at least this probability
#: is void in the category loss (not taught as background).
KEEP_PROB = 0.5
#: Held-back images are measured (before/after numbers) when there are at least this many.
MIN_HELD_BACK = 3
#: The training set is repeated up to at least this many items per epoch (1 image: 64 crops,
#: 16 steps of 4): every epoch starts a data-loading worker, which with 2 steps per epoch
#: (8 items) doubled the step time on one photo (1.2 s against 0.55 s).
MIN_EPOCH_ITEMS = 64
#: What the card, ``pfn finetune`` and napari say when the start scored higher.
KEPT_START_NOTE = ("The held-back images scored the weights it started from higher, so final.pt "
                   "holds those (with any new class channels); last.pt holds the fine-tuned ones.")
#: Sections of PFNConfig a recipe may set (the model's settings come from the weights).
RECIPE_SECTIONS = ("data", "train", "loss")


@dataclass(frozen=True)
class FinetuneProgress:
    """One report of a running fine-tune. ``stage``: 'evaluate before', 'train',
    'evaluate after', 'saving' or 'done'; ``steps``: the planned steps (None: until the time
    budget ends); ``loss``: the last step's (nan before the first)."""

    step: int
    steps: int | None
    elapsed_s: float
    budget_s: float
    loss: float
    stage: str


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` wrote: ``weights`` is ``out_dir/final.pt``; ``before`` / ``after``
    the metrics (``APr@0.5``, ``APr_vol``, ``mIoU``, and the ``images`` and ``objects`` of
    the taught classes measured) on the held-back or ``val`` images, None
    when there were fewer than :data:`MIN_HELD_BACK`. ``kept_start``: the held-back images
    scored the weights it started from higher (AP^r@0.5), so ``final.pt`` holds those (with any
    new class channels) and ``last.pt`` the trained ones."""

    out_dir: Path
    weights: Path
    classes: tuple[str, ...]
    steps: int
    minutes: float
    before: dict | None
    after: dict | None
    kept_start: bool = False  # the held-back images scored the start better: final.pt is it
    taught: tuple[str, ...] = ()  # the classes the data taught
    new_classes: tuple[str, ...] = ()  # of those, the ones the model did not have before


# --------------------------------------------------------------------------- classes

def plan_classes(model_classes: Sequence[str], data_native: Sequence[str],
                 given: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(classes of the fine-tuned model, classes the data teaches)``.

    The taught classes are ``given`` or else the data's own; each is matched to a model class
    by name (:func:`~pfn_napari.data.normalise_class_name`: "Person" == "person", "tv" ==
    "tvmonitor"), and those the model lacks are appended. A data class that is neither taught
    nor the model's is a :class:`DatasetError` (its instances would be taught as background).
    """
    known = {normalise_class_name(c): c for c in model_classes}
    taught = [str(c).strip() for c in (given if given else data_native) if str(c).strip()]
    if given:
        wanted = {normalise_class_name(c) for c in taught} | set(known)
        stray = [c for c in data_native if normalise_class_name(c) not in wanted]
        if stray:
            raise DatasetError(f"the data labels {stray[0]!r}, which is neither in --classes "
                               f"{list(taught)} nor a class of the model; add it to --classes or "
                               "leave --classes out (the data's classes are then used)")
    new = [c for c in dict.fromkeys(taught) if normalise_class_name(c) not in known]
    out = tuple(model_classes) + tuple(new)
    return out, tuple(known.get(normalise_class_name(c), c) for c in dict.fromkeys(taught))


def add_classes(system: PFNSystem, cfg: PFNConfig, names: Sequence[str]) -> PFNConfig:
    """Append output channels for the classes ``names`` to every category head (fc8) and
    count head of ``system`` (in place); return the config with the longer class list."""
    if not names:
        return cfg
    k = len(names)
    for net in _nets(system):
        if net.category_head is not None:
            conv = net.category_head.fc8  # (C+1, F, 1, 1)
            w = torch.cat([conv.weight.data] + [conv.weight.data[:1]] * k)  # background copies
            b = torch.cat([conv.bias.data] + [conv.bias.data[:1] - NEW_CLASS_BIAS] * k)
            net.category_head.fc8 = _conv_like(conv, w, b)
        if net.count_head is not None:
            net.count_head.fc2 = _grow_count_layer(net.count_head.fc2, k)
    return _with_classes(cfg, tuple(cfg.data.classes) + tuple(names))


def drop_classes(system: PFNSystem, cfg: PFNConfig, names: Sequence[str]) -> PFNConfig:
    """Remove the output channels of the classes ``names`` (e.g. hide ``horse`` from a model to
    measure how fast it learns it again); return the config without them."""
    wanted = {normalise_class_name(n) for n in names}
    keep = [i for i, c in enumerate(cfg.data.classes) if normalise_class_name(c) not in wanted]
    if len(keep) == len(cfg.data.classes):
        raise PFNError(f"drop_classes: none of {list(names)} is a class of the model "
                       f"({list(cfg.data.classes)})")
    idx = torch.tensor(keep)
    for net in _nets(system):
        if net.category_head is not None:
            conv = net.category_head.fc8
            rows = torch.cat([torch.tensor([0]), idx + 1])
            net.category_head.fc8 = _conv_like(conv, conv.weight.data[rows], conv.bias.data[rows])
        if net.count_head is not None:
            layer = net.count_head.fc2
            net.count_head.fc2 = _layer_like(layer, layer.weight.data[idx], layer.bias.data[idx])
    return _with_classes(cfg, tuple(cfg.data.classes[i] for i in keep))


def _nets(system: PFNSystem) -> list[nn.Module]:
    return [net for _, net in _named_nets(system)]


def _named_nets(system: PFNSystem) -> list[tuple[str, nn.Module]]:
    """``(role, network)``: its kind, ``category`` and ``instance``, or ``unified`` (one network
    with every head: a recipe's ``instance.`` prefixes do not freeze it)."""
    return [(net.kind, net) for net in (system.category, system.instance) if net is not None]


def _with_classes(cfg: PFNConfig, classes: tuple[str, ...]) -> PFNConfig:
    """``cfg`` with the class list ``classes``; the shown classes keep those still in it."""
    show = dataclasses.replace(cfg.show, classes=tuple(c for c in cfg.show.classes if c in classes))
    if cfg.show.classes and not show.classes:  # every shown class dropped: show what is left
        show = dataclasses.replace(cfg.show, classes=classes)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes=classes),
                               model=dataclasses.replace(cfg.model, num_classes=len(classes)),
                               show=show)


def show_taught(cfg: PFNConfig, taught: Sequence[str]) -> PFNConfig:
    """``cfg`` whose ``show.classes`` (when it limits them) also holds the classes the data
    teaches: a model shows what it was taught, new classes included."""
    if not cfg.show.classes:
        return cfg
    shown = tuple(dict.fromkeys([*cfg.show.classes, *taught]))
    return dataclasses.replace(cfg, show=dataclasses.replace(cfg.show, classes=shown))


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, weight.shape[0], conv.kernel_size, conv.stride,
                    conv.padding).to(weight.device)
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def _layer_like(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        return _conv_like(layer, weight, bias)
    new = nn.Linear(layer.in_features, weight.shape[0]).to(weight.device)
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def _grow_count_layer(layer: nn.Module, k: int) -> nn.Module:
    """The count head's last layer with ``k`` more outputs, each the mean of the others."""
    w, b = layer.weight.data, layer.bias.data
    w = torch.cat([w] + [w.mean(dim=0, keepdim=True)] * k)
    b = torch.cat([b] + [b.mean(dim=0, keepdim=True)] * k)
    return _layer_like(layer, w, b)


# --------------------------------------------------------------------------- the recipe

def recipe_config(cfg: PFNConfig, recipe: str | Path = RECIPE) -> PFNConfig:
    """``cfg`` (a trained model's) with the data, train and loss settings of ``recipe``
    (a shipped name or a YAML file); a recipe that sets anything else is a ConfigError."""
    path = resolve_config_path(str(recipe))
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    other = sorted(set(values) - set(RECIPE_SECTIONS))
    if other:
        raise ConfigError(f"{path}: a fine-tuning recipe sets {', '.join(RECIPE_SECTIONS)} "
                          f"only, not {', '.join(other)}")
    merged = config_to_dict(cfg)
    for section in RECIPE_SECTIONS:
        merged[section].update(values.get(section) or {})
    return config_from_dict(merged, where=str(path))


# --------------------------------------------------------------------------- the run

def finetune(weights: str | Path, data: str, out: str | Path, minutes: float, *,
             classes: Sequence[str] | None = None, val: str | None = None,
             resume: bool = False,
             progress: Callable[[FinetuneProgress], None] | None = None,
             should_stop: Callable[[], bool] | None = None, seed: int = 0,
             split: str = "all", recipe: str | Path = RECIPE, max_steps: int = 0,
             device: str = "cpu", bar: bool = False, threads: int = 0) -> FinetuneResult:
    """Fine-tune the model in ``weights`` (a checkpoint or weights file; ``'default'``: the
    shipped one) on ``data`` (a data spec, split ``split``) for ``minutes`` of training.

    Args:
        classes: the classes the data teaches (default: the data's own); new ones get
            channels (see the module docstring).
        val: a data spec to measure before and after (split ``split``); default: every
            :data:`~pfn_napari.data.folder.VAL_EVERY`-th image of ``data`` is held back when that
            gives at least :data:`MIN_HELD_BACK` images, else nothing is measured.
        resume: continue the run in ``out`` from ``out/last.pt`` (exactly: the same weights
            as a run that never stopped, for the same steps).
        progress: called after every step (and at each stage) with a :class:`FinetuneProgress`.
        should_stop: polled after every step; True saves ``last.pt`` (resumable) and finishes
            with the weights so far (``final.pt`` and the card).
        max_steps: stop after this many steps even with time left (0: time only).
        bar: show a tqdm progress bar (the CLI).
        threads: torch CPU threads (0: leave as is).

    Raises :class:`DatasetError` for data that teaches nothing (the same checks as
    ``pfn train``), :class:`CheckpointError` for weights that are not a complete model,
    :class:`OutputError` for an ``out`` that holds another run or is being written.
    Ctrl-C saves ``last.pt`` before it passes on.
    """
    if not (minutes > 0 or max_steps > 0):
        raise PFNError(f"minutes={minutes!r}: give a positive time budget (or max_steps)")
    if threads > 0:
        torch.set_num_threads(int(threads))
    out_dir = check_output_dir(Path(out), "--out")
    with out_dir_lock(out_dir, True):
        run = _setup(weights, data, out_dir, minutes, classes, val, resume, seed, split, recipe,
                     max_steps, device)
        report = _reporter(run, progress, bar)
        try:
            try:
                if run.before is None and run.val is not None and run.step == 0:
                    report("evaluate before")
                    run.before = _measure(run)
                _train(run, report, should_stop)
            except KeyboardInterrupt:
                _save_last(run)
                raise
            _save_last(run)
            if run.val is not None:
                report("evaluate after")
                run.after = _measure(run)
                if start_was_better(run.before, run.after):
                    run.system, run.kept_start = _start_system(run), True
            report("saving")
            result = _finish(run)
            report("done")
        finally:
            report.close()  # the bar names each stage until the end
        return result


@dataclass
class _Run:
    weights: str
    data: str
    val_spec: str | None
    split: str
    out_dir: Path
    cfg: PFNConfig
    system: PFNSystem
    taught: tuple[str, ...]
    new_classes: tuple[str, ...]
    train_ids: list[str]
    val: Any  # the held-back / val dataset (None: nothing measured)
    loader: DataLoader
    train_set: TrainingSet
    sampler: EpochSampler
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    device: torch.device
    budget_s: float
    max_steps: int
    unlabelled: torch.Tensor  # (C,) bool: classes the data does not label
    held: list[tuple[torch.Tensor, torch.Tensor]]  # (parameter, rows kept): count_rows_held
    # train.amp: the forward pass in bfloat16 where the device has it (no GradScaler here)
    amp_dtype: torch.dtype | None = None
    step: int = 0
    elapsed_s: float = 0.0  # training time of earlier calls (resume)
    loss: float = float("nan")
    before: dict | None = None
    after: dict | None = None
    stopped: str = ""
    kept_start: bool = False


def _setup(weights, data, out_dir, minutes, classes, val, resume, seed, split, recipe,
           max_steps, device) -> _Run:
    """Everything before the first step: the model, its classes, the data, the optimiser, and
    with ``resume`` the state of ``out_dir/last.pt``."""
    last = out_dir / "last.pt"
    ckpt = _resume_checkpoint(last) if resume else None
    if not resume:
        _refuse_taken(out_dir)
    for stale in remove_stale_temporaries(out_dir):
        stale.unlink(missing_ok=True)
    if ckpt is not None:
        state = ckpt["extra"]["finetune"]
        weights, data, val, split = state["weights"], state["data"], state["val"], state["split"]
        cfg = config_of(ckpt, last)
        system = load_checkpoint(last)[0]
        taught, new = tuple(state["taught"]), tuple(state["new_classes"])
    else:
        system, cfg = _load_start(weights)
        cfg = recipe_config(cfg, recipe)
        native = data_classes(open_dataset(data, split, None))
        all_classes, taught = plan_classes(cfg.data.classes, native, classes)
        new = all_classes[len(cfg.data.classes):]
        cfg = show_taught(add_classes(system, cfg, new), taught)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, seed=int(seed) if ckpt is None else cfg.train.seed, out_dir=str(out_dir),
        init=str(weights)))
    train_data, val_data = _split_data(data, val, split, cfg)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    seed_everything(cfg.train.seed)
    train_set, sampler, loader, spe = _loader(train_data, cfg)
    system.to(dev)
    if cfg.train.channels_last:
        system.to(memory_format=torch.channels_last)
    optimizer = _optimizer(system, cfg)
    idx = {normalise_class_name(c) for c in taught}
    unlabelled = torch.tensor([normalise_class_name(c) not in idx for c in cfg.data.classes],
                              device=dev)
    run = _Run(weights=str(weights), data=data, val_spec=val, split=split, out_dir=out_dir, cfg=cfg,
               system=system, taught=taught, new_classes=tuple(new),
               train_ids=[str(i) for i in train_data.image_ids], val=val_data, loader=loader,
               train_set=train_set, sampler=sampler, steps_per_epoch=spe, optimizer=optimizer,
               device=dev, budget_s=max(0.0, float(minutes)) * 60.0, max_steps=int(max_steps),
               unlabelled=unlabelled,
               held=count_rows_held(system, len(cfg.data.classes) - len(new)),
               amp_dtype=autocast_dtype(dev, float16=False) if cfg.train.amp else None)
    if cfg.train.amp and run.amp_dtype is None:
        warnings.warn(f"train.amp ignored: no native bfloat16 on {dev} (on a CPU: AVX512-BF16 or "
                      "AMX), where mixed precision would be slower than float32", stacklevel=2)
    if ckpt is not None:
        _restore(run, ckpt, last)
    else:
        atomic_write_text(out_dir / "config.yaml",
                          yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        torch.manual_seed(cfg.train.seed + 1)  # the dropout stream
    return run


def _load_start(weights: str | Path) -> tuple[PFNSystem, PFNConfig]:
    """The complete system (category + instance, or unified) of ``weights``."""
    from .inference import default_weights_path

    path = default_weights_path() if str(weights) in ("", "default") else Path(weights)
    system, cfg, _ = load_checkpoint(path)
    if system.instance is None:
        raise CheckpointError(f"{path}: holds a category network only; fine-tuning needs a "
                              "complete model (a stage 'instance' or 'unified' file)")
    return system, cfg


def _measure(run: _Run) -> dict[str, Any]:
    """AP^r@0.5, AP^r_vol and mIoU of ``run.system`` on the measured images, with how many
    images and objects of the taught classes they hold (``images``, ``objects``: counted for
    the measurement before training, read back from it after)."""
    metrics = dataset_metrics(run.system, run.cfg, run.device, run.val)
    if run.before and "objects" in run.before:
        return {**metrics, "images": run.before["images"], "objects": run.before["objects"]}
    return {**metrics, **measured_size(run.val, run.taught)}


def measured_size(data: Any, taught: Sequence[str]) -> dict[str, int]:
    """``{"images": n, "objects": m}``: the images of ``data`` (an opened dataset in its own
    classes) and their labelled objects of the classes in ``taught``."""
    names = data_classes(data)
    wanted = {normalise_class_name(c) for c in taught}
    ids = {i + 1 for i, c in enumerate(names) if normalise_class_name(c) in wanted}
    objects = sum(int(sum(int(c) in ids for c in data[i].instance_classes))
                  for i in range(len(data)))
    return {"images": len(data), "objects": objects}


def measurement_note(metrics: Mapping[str, Any] | None) -> str:
    """How much one object weighs in a before/after comparison, in words: ``"11 objects:
    one found or missed moves AP^r@0.5 by about 9 points"`` (``""`` without a count).

    A few held-back images hold few objects, so a difference of a few points is one object
    more or less, not a better model (docs/finetune.md)."""
    n = int((metrics or {}).get("objects") or 0)
    if n <= 0:
        return ""
    return (f"{n} object{'s' if n != 1 else ''}: one found or missed moves AP^r@0.5 by about "
            f"{100.0 / n:.0f} points")


def start_was_better(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> bool:
    """True when the held-back images score the start strictly higher (AP^r@0.5; a tie keeps
    the fine-tuned weights)."""
    if not before or not after:
        return False
    b, a = before.get("APr@0.5"), after.get("APr@0.5")
    return b is not None and a is not None and math.isfinite(b) and math.isfinite(a) and a < b


def _start_system(run: _Run) -> PFNSystem:
    """The weights the run started from, with the run's new class channels (as ``_setup``
    made them), on the run's device."""
    system, cfg = _load_start(run.weights)
    add_classes(system, cfg, run.new_classes)
    trained = dict(run.system.named_parameters())
    for name, p in system.named_parameters():  # what the run trained, for the card
        p.requires_grad_(trained[name].requires_grad)
    return system.to(run.device)


def _refuse_taken(out_dir: Path) -> None:
    found = [n for n in ("final.pt", "last.pt", "log.csv") if (out_dir / n).exists()]
    if found:
        raise OutputError(f"--out {out_dir} already holds a fine-tuning run ({', '.join(found)}); "
                          "pass --resume to continue it, or another --out")


def _resume_checkpoint(last: Path) -> dict[str, Any]:
    if not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume (no last.pt in --out)")
    ckpt = read_checkpoint(last)
    if ckpt["kind"] != "training" or "finetune" not in (ckpt.get("extra") or {}):
        raise CheckpointError(f"{last}: not a checkpoint of `pfn finetune`; resume a "
                              "`pfn train` run with `pfn train --resume`")
    check_finite(ckpt["model"], last)
    return ckpt


def _split_data(data: str, val: str | None, split: str, cfg: PFNConfig):
    """``(training set, measured set or None)``, both mapped onto the model's classes and
    checked as ``pfn train`` checks its data."""
    classes = tuple(cfg.data.classes)
    full = open_dataset(data, split, classes)
    check_labels(full, _roles(cfg, data, split), "train")
    if val is not None:
        measured = open_dataset(val, split, None)
        check_labels(open_dataset(val, split, classes), _roles(cfg, val, split, "val"), "val")
        return full, measured
    held = held_back_indices(full.image_ids)
    if len(held) < MIN_HELD_BACK:
        return full, None
    kept = [i for i in range(len(full)) if i not in set(held)]
    native = open_dataset(data, split, None)
    return full.subset(kept), native.subset(held)


def _roles(cfg: PFNConfig, spec: str, split: str, role: str = "train") -> PFNConfig:
    """``cfg`` with ``data.train`` (or ``data.val``) naming ``spec``, for the checks' messages."""
    d = dataclasses.replace(cfg.data, **({"train": spec, "train_split": split} if role == "train"
                                         else {"val": spec, "val_split": split}))
    return dataclasses.replace(cfg, data=d)


def _loader(dataset, cfg: PFNConfig) -> tuple[TrainingSet, EpochSampler, DataLoader, int]:
    """Crops of the training images (repeated to at least :data:`MIN_EPOCH_ITEMS` and one
    batch per epoch), reproducible from the seed, epoch and index."""
    n = len(dataset)
    batch = cfg.train.batch_size
    reps = max(1, math.ceil(max(MIN_EPOCH_ITEMS, batch) / n))
    items = dataset.subset(list(range(n)) * reps) if reps > 1 else dataset
    d = cfg.data
    transform = TrainTransform(d.crop_size, d.scale_min, d.scale_max, d.flip,
                               count_share=d.count_targets == "share")
    train_set = TrainingSet(items, transform, cfg.model.num_classes, cfg.model.encoding,
                            seed=cfg.train.seed, copy_paste=d.copy_paste)
    sampler = EpochSampler(len(train_set), 1, 0, seed=cfg.train.seed)
    loader = DataLoader(train_set, batch_size=batch, sampler=sampler,
                        num_workers=d.num_workers, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    return train_set, sampler, loader, len(sampler) // batch


def _optimizer(system: PFNSystem, cfg: PFNConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over every network: ``train.lr`` for the backbones, ``train.lr_new``
    for the heads; parameters named by ``train.frozen`` do not train: a prefix of a name inside
    each network (``backbone._blocks.0.``: in both), or of the name under the network's role
    (``instance.location_head.``: only there)."""
    t = cfg.train
    prefixes = tuple(t.frozen)
    pretrained, new = [], []
    for role, net in _named_nets(system):
        for name, p in net.named_parameters():
            p.requires_grad_(not (prefixes and (name.startswith(prefixes) or
                                                f"{role}.{name}".startswith(prefixes))))
        a, b = net.param_groups()
        pretrained += a
        new += b
    groups = [g for g in ({"params": pretrained, "lr": t.lr, "name": "pretrained"},
                          {"params": new, "lr": t.lr_new, "name": "new"}) if g["params"]]
    if not groups:
        raise ConfigError(f"train.frozen={list(t.frozen)}: the recipe freezes every parameter "
                          "of the model; nothing would learn")
    return make_optimizer(groups, t)


def _restore(run: _Run, ckpt: Mapping[str, Any], last: Path) -> None:
    state = ckpt["extra"]["finetune"]
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{last}: cannot restore the optimiser ({exc})") from None
    run.step = int(ckpt["step"])
    run.elapsed_s = float(state["elapsed_s"])
    run.before = state.get("before")
    restore_rng_state(ckpt["rng"])


# --------------------------------------------------------------------------- the steps

def _train(run: _Run, report, should_stop: Callable[[], bool] | None) -> None:
    """Steps until the time budget (or ``max_steps``) ends or ``should_stop`` says so."""
    started = time.perf_counter() - run.elapsed_s
    spe = run.steps_per_epoch
    batch_size = run.cfg.train.batch_size
    while not _done(run):
        epoch, skip = divmod(run.step, spe)
        run.train_set.set_epoch(epoch)
        run.sampler.set_epoch(epoch, skip * batch_size)
        for batch in run.loader:
            run.loss = _step(run, batch)
            run.elapsed_s = time.perf_counter() - started
            report("train")
            if should_stop is not None and should_stop():
                run.stopped = "stopped"
                return
            if _done(run) or run.step % spe == 0:
                break


def _done(run: _Run) -> bool:
    if run.max_steps > 0 and run.step >= run.max_steps:
        return True
    return run.budget_s > 0 and run.elapsed_s >= run.budget_s


def _objective(run: _Run, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The loss of the parts that learn: the category network alone when nothing of the
    instance network trains (the shipped recipe: its forward pass is skipped), else the
    category, location and count losses of both networks on the same batch."""
    system, cfg = run.system, run.cfg
    if system.category is not None and not _learns(system.instance):
        out = system.category(batch["image"])  # NetOutputs: seg_logits (B, C+1, h, w)
        batch["class_map"] = keep_unlabelled(batch["class_map"], out.seg_logits.detach(),
                                             run.unlabelled)
        return total_loss(out, batch, cfg.loss, "category")
    out = system.instance(batch["image"])  # NetOutputs (locations, counts) on the stride-8 grid
    if system.category is not None:
        out.seg_logits = system.category(batch["image"]).seg_logits  # (B, C+1, h, w)
    if out.count_density is not None and cfg.model.count_gate:
        out.counts = gated_counts(out.count_density, out.seg_logits.detach())  # (B, C)
    batch["class_map"] = keep_unlabelled(batch["class_map"], out.seg_logits.detach(),
                                         run.unlabelled)
    labelled = ~run.unlabelled
    out.counts = out.counts[:, labelled]  # (B, C')
    batch["counts"] = batch["counts"][:, labelled]  # (B, C')
    return total_loss(out, batch, cfg.loss, "unified")


def _learns(net: nn.Module) -> bool:
    return any(p.requires_grad for p in net.parameters())


def _step(run: _Run, batch: Mapping[str, torch.Tensor]) -> float:
    """One SGD step on ``batch``; the loss."""
    for net in _nets(run.system):
        net.train()
    batch = dict(batch_to(dict(batch), run.device))
    with mixed_precision(run.device, run.amp_dtype):
        loss, parts = _objective(run, batch)
    if not torch.isfinite(loss):
        raise PFNError(f"non-finite loss at fine-tuning step {run.step + 1} "
                       f"({', '.join(f'{k} {v:.4g}' for k, v in parts.items() if '/' not in k)}); "
                       "lower train.lr / train.lr_new in the recipe")
    _set_rates(run)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(
            [p for g in run.optimizer.param_groups for p in g["params"]], run.cfg.train.grad_clip)
    run.optimizer.step()
    for param, rows in run.held:  # the counts of the classes the model had stay as they were
        param.data[: len(rows)] = rows
    run.step += 1
    _log(run, parts)
    return float(loss.detach())


def _set_rates(run: _Run) -> None:
    """The learning rates of this step: the recipe's, times :func:`~pfn_napari.train.poly_factor`
    of the share of the run done (of ``max_steps`` or of the time budget, whichever is further
    along) with ``train.lr_policy='poly'`` (constant otherwise)."""
    t = run.cfg.train
    time_share = run.elapsed_s / run.budget_s if run.budget_s > 0 else 0.0
    factor = (poly_factor(run_progress(run.step, run.max_steps, time_share))
              if t.lr_policy == "poly" else 1.0)
    for group in run.optimizer.param_groups:
        group["lr"] = (t.lr if group["name"] == "pretrained" else t.lr_new) * factor


def count_rows_held(system: PFNSystem, known: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, copy of its first ``known`` rows)`` of each count head's output layer: the
    count channels of the classes the model had, which a fine-tune keeps (the counts of those
    classes still follow the category map through the gate). Taught on a few crops they got
    worse (docs/finetune.md); only the channels of new classes learn. A frozen layer (the
    shipped recipe's) needs no holding: none is listed."""
    held = []
    for net in _nets(system):
        if net.count_head is not None:
            held += [(p, p.data[:known].clone()) for p in (net.count_head.fc2.weight,
                                                           net.count_head.fc2.bias)
                     if p.requires_grad]
    return held


def keep_unlabelled(class_map: torch.Tensor, seg_logits: torch.Tensor,
                    unlabelled: torch.Tensor, threshold: float = KEEP_PROB) -> torch.Tensor:
    """``class_map (B, h, w)`` with its background pixels void where the model gives a class
    the data does not label (``unlabelled (C,)`` bool) probability ``>= threshold``
    (``seg_logits (B, C+1, h, w)``): the data says nothing about those classes there."""
    if not bool(unlabelled.any()):
        return class_map
    probs = torch.softmax(seg_logits.float(), dim=1)[:, 1:]  # (B, C, h, w)
    other = (probs * unlabelled.view(1, -1, 1, 1)).amax(dim=1)  # (B, h, w)
    h, w = class_map.shape[-2:]
    other = other[:, :h, :w]
    return torch.where((class_map == 0) & (other >= threshold),
                       torch.full_like(class_map, VOID), class_map)


def _log(run: _Run, parts: Mapping[str, float]) -> None:
    path = run.out_dir / "log.csv"
    rates = {f"lr_{g['name']}": f"{g['lr']:.6g}" for g in run.optimizer.param_groups}
    row = {"step": run.step, "elapsed_s": round(run.elapsed_s, 3),
           **{k: f"{v:.6g}" for k, v in parts.items() if "/" not in k}, **rates}
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


class _Report:
    """Calls the user's ``progress`` and moves the tqdm bar (``bar``)."""

    def __init__(self, run: _Run, progress, bar: bool) -> None:
        from tqdm.auto import tqdm

        self.run, self.progress = run, progress
        total = run.max_steps if run.max_steps > 0 else None
        self.bar = tqdm(total=total, initial=run.step, disable=not bar, unit="step",
                        desc="pfn finetune", dynamic_ncols=True)

    def __call__(self, stage: str) -> None:
        run = self.run
        self.bar.set_description(f"pfn finetune: {stage}", refresh=stage != "train")
        if stage == "train":
            self.bar.update(1)
            self.bar.set_postfix({"loss": f"{run.loss:.4g}",
                                  "min": f"{run.elapsed_s / 60:.1f}/{run.budget_s / 60:g}"},
                                 refresh=False)
        if self.progress is not None:
            self.progress(FinetuneProgress(run.step, run.max_steps or None, run.elapsed_s,
                                           run.budget_s, run.loss, stage))

    def close(self) -> None:
        self.bar.close()


def _reporter(run: _Run, progress, bar: bool) -> _Report:
    return _Report(run, progress, bar)


# --------------------------------------------------------------------------- saving, the card

def _state(run: _Run) -> dict[str, Any]:
    return {"weights": run.weights, "data": run.data, "val": run.val_spec,
            "split": run.split, "taught": list(run.taught),
            "new_classes": list(run.new_classes), "elapsed_s": run.elapsed_s,
            "before": run.before}


def _save_last(run: _Run) -> Path:
    return save_checkpoint(run.out_dir / "last.pt", system_state=run.system.state_dict(),
                           config=run.cfg, networks=networks_of(run.system),
                           optimizer=run.optimizer.state_dict(), step=run.step,
                           epoch=run.step // max(1, run.steps_per_epoch),
                           rng=capture_rng_state(), extra={"finetune": _state(run)})


def _finish(run: _Run) -> FinetuneResult:
    card = card_meta(run)
    final = save_weights(run.out_dir / "final.pt", run.system.cpu(), run.cfg,
                         meta={"finetune": card})
    atomic_write_text(run.out_dir / "README.md", card_markdown(card))
    return FinetuneResult(out_dir=run.out_dir, weights=final, classes=tuple(run.cfg.data.classes),
                          steps=run.step, minutes=run.elapsed_s / 60.0, before=run.before,
                          after=run.after, kept_start=run.kept_start,
                          taught=tuple(run.taught), new_classes=tuple(run.new_classes))


def card_meta(run: _Run) -> dict[str, Any]:
    """What the card says, as plain values (stored in ``final.pt``'s ``meta['finetune']``)."""
    return {"from": run.weights, "data": run.data, "val": run.val_spec or
            (f"every {VAL_EVERY}th image of the data, held back" if run.val is not None else ""),
            "images": run.train_ids, "classes_taught": list(run.taught),
            "new_classes": list(run.new_classes), "steps": run.step,
            "minutes": round(run.elapsed_s / 60.0, 2), "stopped": run.stopped,
            "recipe": {"crop_size": run.cfg.data.crop_size, "batch_size": run.cfg.train.batch_size,
                       "lr": run.cfg.train.lr, "lr_new": run.cfg.train.lr_new,
                       "frozen": list(run.cfg.train.frozen),
                       "learns": _what_learns(run.system)},
            "before": run.before, "after": run.after, "kept_start": run.kept_start,
            "held_back": [str(i) for i in run.val.image_ids] if run.val is not None else []}


def _what_learns(system: PFNSystem) -> str:
    """Which networks the fine-tune trained, in words, for the card."""
    parts = [f"the {role} network" + ("" if all(p.requires_grad for p in net.parameters())
                                      else " (in part)")
             for role, net in _named_nets(system) if _learns(net)]
    kept = [f"the {role} network" for role, net in _named_nets(system) if not _learns(net)]
    return " and ".join(parts) + (f"; {' and '.join(kept)} kept as it was" if kept else "")


def card_markdown(card: Mapping[str, Any]) -> str:
    """The README.md of a fine-tuned model."""
    def num(m: Mapping[str, Any] | None, key: str) -> str:
        v = (m or {}).get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"

    lines = [
        "# Fine-tuned PFN", "",
        f"Fine-tuned from `{card['from']}` with `pfn finetune` on `{card['data']}`.", "",
        "| | |", "|---|---|",
        f"| images trained on | {len(card['images'])} |",
        f"| classes taught | {', '.join(card['classes_taught'])} |",
        f"| new classes | {', '.join(card['new_classes']) or 'none'} |",
        f"| steps | {card['steps']} |",
        f"| minutes of training | {card['minutes']:.2f}"
        + (" (stopped by the user)" if card.get("stopped") else "") + " |",
        f"| recipe | crop {card['recipe']['crop_size']}, batch {card['recipe']['batch_size']}, "
        f"lr {card['recipe']['lr']:g} / {card['recipe']['lr_new']:g} |",
        f"| what learned | {card['recipe'].get('learns', '-')} |", "",
    ]
    if card.get("before") is not None or card.get("after") is not None:
        note = measurement_note(card.get("before") or card.get("after"))
        lines += [f"Measured on {len(card['held_back'])} images not trained on ({card['val']})"
                  + (f"; they hold {note}, so read a difference of that size as noise"
                     if note else "") + ":", "",
                  "| | AP^r@0.5 | mIoU |", "|---|---|---|",
                  f"| before | {num(card['before'], 'APr@0.5')} | {num(card['before'], 'mIoU')} |",
                  f"| after | {num(card['after'], 'APr@0.5')} | {num(card['after'], 'mIoU')} |", ""]
        if card.get("kept_start"):
            lines += [KEPT_START_NOTE, ""]
    else:
        lines += [f"Not measured: fewer than {MIN_HELD_BACK} images to hold back (give --val "
                  f"or at least {MIN_HELD_BACK * VAL_EVERY} images).", ""]
    lines += ["Images: " + ", ".join(card["images"]), ""]
    return "\n".join(lines)

