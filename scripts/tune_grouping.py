"""Choose a model's grouping defaults on the real val splits: the networks run once per image,
then every grouping setting of a small grid groups the same output.

    python scripts/tune_grouping.py --weights runs/v6/pfn-lite0-voc.pt
    python scripts/tune_grouping.py --weights W --tau 0.2 0.35 0.5 --sigma 0.5 1.0 \
        --save runs/v6/pfn-lite0-voc-tuned.pt      # a copy of W with the best setting

Prints one row per setting: AP^r@0.5 on each real val split of ``../shared/data`` (COCO photos
in VOC layout, Penn-Fudan, Weizmann horses), their mean (the choice), the person AP^r@0.5 of
the COCO photos and the mean absolute error of the per-image person count on Penn-Fudan, and
each split's mIoU (the class map each setting's grouping ends with: refined by the counts, with
the objects the ImageNet step names and checks, so every setting changes it; ``--objective
ap+miou`` chooses by the mean of both). Tune
on these val splits only: the photos the shipped weights are checked on are kept elsewhere.
``--save`` writes a new file (never the weights read) with the best setting as its
``grouping`` and ``imagenet`` config; everything else is copied.

    python scripts/tune_grouping.py --weights W --folds 5 --tau 0.2 0.35 0.5 \
        --count-source head votes mean --imagenet-enabled off on --imagenet-check off on \
        --cache /tmp/cv_scores.pkl [--objective ap+precision]

``--folds K`` cross-validates instead (docs/experiments/cv-settings.md): every labelled photo
the networks were not trained on (the val splits and the COCO sample photos without a VOC
object) in K folds stratified by source; each fold's setting is chosen on the other folds and
read on its own photos beside the simple baseline (the count head, the config's tau, no
ImageNet step) and the weights' own setting; an added field stays only if it wins on every
fold, and the default that rule gives is printed (never saved).

    python scripts/tune_grouping.py --weights NEW.pt --against weights/pfn-lite0-voc.pt \
        --folds 5 --tau 0.5 --count-source head mean --cache /tmp/cv_scores.pkl

``--against W0`` then reads the same grid on the same photos and folds with the networks of
``W0``, each file choosing its setting per fold, and says whether ``--weights`` wins on every
fold: the rule a new file must pass to replace ``W0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import pickle
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from pfn_napari.checkpoint import (config_of, load_checkpoint, read_checkpoint, run_meta,
                                   save_weights)
from pfn_napari.config import VOID, GroupingConfig, ImageNetConfig
from pfn_napari.data import SubsetDataset
from pfn_napari.demo import find_shared_data, no_voc_photos, open_set, real_specs
from pfn_napari.errors import PFNError
from pfn_napari.evaluate import (Evaluator, average_precision, mask_ious, match_image,
                                 pixel_confusion, right_objects, visible_truth)
from pfn_napari.output import atomic_write
from pfn_napari.predictor import Predictor
from pfn_napari.producers import class_lut, to_data_classes


#: ``GroupingConfig`` fields the grid varies (dotted below the section, as ``--set`` names
#: them), in the table's column order.
GRID_FIELDS = ("method", "tau", "sigma", "min_size_frac", "refine", "count_source",
               "votes.iou", "votes.min_frac", "votes.merge_iou")
#: ``ImageNetConfig`` fields the grid varies (after the grouping's in the table).
IMAGENET_FIELDS = ("weight", "eps", "min_frac", "touch", "check.enabled", "shape")
#: Fields that only matter when the ImageNet step is on (``imagenet.weight`` > 0).
PRIOR_FIELDS = IMAGENET_FIELDS[1:]
#: Fields that only matter when the count source is not the head.
VOTE_FIELDS = ("votes.iou", "votes.min_frac", "votes.merge_iou")


def field_of(cfg, name: str):
    """The value of the dotted field ``name`` of the config section ``cfg``
    (``field_of(g, "votes.iou") == g.votes.iou``)."""
    for part in name.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_fields(cfg, values: dict):
    """``cfg`` (a frozen config section) with the dotted fields of ``values`` replaced."""
    nested: dict[str, dict] = {}
    flat = {}
    for name, value in values.items():
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    flat.update({head: with_fields(getattr(cfg, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(cfg, **flat)


class Setting(NamedTuple):
    """One row of the grid: the grouping's settings and the ImageNet step's after it."""

    grouping: GroupingConfig
    imagenet: ImageNetConfig


def settings_grid(base, taus, sigmas, min_sizes, methods, imagenet=None,
                  more: dict | None = None) -> list:
    """Every combination of the given values over ``base`` (a ``GroupingConfig``) and
    ``imagenet`` (an ``ImageNetConfig``, default the defaults) as :class:`Setting` rows;
    ``more`` maps other fields of either, by their ``--set`` names, to their values (e.g.
    ``{"grouping.count_source": ["head", "votes"], "grouping.votes.iou": [0.4, 0.6],
    "imagenet.weight": [0, 5]}``). Settings that differ only in the vote fields of the head's
    count source, or in the ImageNet fields of a step that does not run (weight 0 or switched
    off), are listed once (:func:`canonical`)."""
    imagenet = imagenet or ImageNetConfig()
    values = {"grouping.tau": taus, "grouping.sigma": sigmas,
              "grouping.min_size_frac": min_sizes, "grouping.method": methods,
              **{k: v for k, v in (more or {}).items() if v}}
    grid, seen = [], set()
    for combo in itertools.product(*values.values()):
        chosen = dict(zip(values, combo))
        g = with_fields(base, {k.partition(".")[2]: v for k, v in chosen.items()
                               if k.startswith("grouping.")})
        step = with_fields(imagenet, {k.partition(".")[2]: v for k, v in chosen.items()
                                      if k.startswith("imagenet.")})
        setting = canonical(Setting(g, step), base, imagenet)
        if setting not in seen:
            seen.add(setting)
            grid.append(setting)
    return grid


def canonical(setting: Setting, base: GroupingConfig, imagenet: ImageNetConfig) -> Setting:
    """``setting`` with the fields it does not read at ``base``'s / ``imagenet``'s values (the
    vote fields of the head's count source; the ImageNet step's fields when it does not run),
    so that two settings that group alike compare equal."""
    g, step = setting
    if g.count_source == "head":
        g = dataclasses.replace(g, votes=base.votes)
    if not step.active:
        step = with_fields(step, {k: field_of(imagenet, k) for k in PRIOR_FIELDS})
    return Setting(g, step)


def _cell(value) -> str:
    """A table cell: numbers in ``g`` format, switches as on / off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(setting: Setting) -> str:
    """The grid fields of a setting as ``key=value`` words (``imagenet.`` before the step's)."""
    words = [(k, field_of(setting.grouping, k)) for k in GRID_FIELDS]
    words += [(f"imagenet.{k}", field_of(setting.imagenet, k)) for k in IMAGENET_FIELDS]
    return " ".join(f"{k}={v:g}" if isinstance(v, float) and not isinstance(v, bool)
                    else f"{k}={v}" for k, v in words)


def evaluate_settings(predictor: Predictor, settings: list, shared: Path,
                      limit: int | None = None) -> dict[str, list]:
    """``{set name: [Metrics per setting]}`` over the real val splits (the first ``limit``
    images of each); the networks run once per image (the ImageNet classifier too, at the first
    setting whose step is on). A setting is a :class:`Setting`, or a ``GroupingConfig`` with
    the predictor's ImageNet settings."""
    classes = tuple(predictor.class_names)
    settings = [s if isinstance(s, Setting) else Setting(s, predictor.imagenet)
                for s in settings]
    out = {}
    for es in real_specs(shared):
        ds = open_set(es, "val", classes, limit=limit)
        if ds is None:
            continue
        lut = class_lut(classes, tuple(ds.classes))
        evaluators = [Evaluator(ds.classes) for _ in settings]
        for index in tqdm(range(len(ds)), desc=es.name, unit="img"):
            sample = ds[index]
            predictor.set_image(sample.image, name=str(sample.image_id),
                                image_id=sample.image_id)
            for setting, ev in zip(settings, evaluators):
                inst = to_data_classes(predictor.instances(setting.grouping,
                                                           imagenet=setting.imagenet),
                                       lut, sample.image_id)
                semantic = lut[predictor.class_map()].astype(np.uint8)  # (H, W), this setting's
                ev.add(sample, inst, semantic)
        out[es.name] = [ev.result() for ev in evaluators]
    return out


def person_ap(metrics) -> float:
    """AP^r@0.5 of the person class, percent (NaN without people)."""
    names = list(metrics.class_names)
    return float(metrics.ap[0.5][names.index("person")] * 100) if "person" in names else np.nan


def person_count_error(metrics) -> float:
    """Mean absolute error of the per-image person count (NaN without people)."""
    names = list(metrics.class_names)
    return float(metrics.count_error()[names.index("person")]) if "person" in names else np.nan


# ----------------------------------------------------------------------------- cross-validation
# ``--folds K``: every labelled photo the networks were not trained on, split into K folds
# stratified by source; each fold's setting is chosen on the other K - 1 and reported on it.

#: The sources of the pooled photos: the three val splits and the COCO sample photos without a
#: VOC object (``coco-neg``: every object shown there is false).
NEGATIVES = "coco-neg"
#: The AP^r@0.5 columns: each pools the photos of its sources (the COCO photos with and
#: without VOC objects rank together, as a user's COCO photos do). Their mean is the objective.
AP_SOURCES = {"coco": ("coco-voc", NEGATIVES), "pennfudan": ("pennfudan",),
              "horses": ("horses",)}
#: The IoU threshold of the AP^r the folds choose by.
AP_IOU = 0.5


class PhotoScore(NamedTuple):
    """One photo grouped by one setting: what the folds add up (no masks kept)."""

    scores: np.ndarray  # (N,) float64, the shown objects' scores
    classes: np.ndarray  # (N,) int64, their classes 1..C
    tp: np.ndarray  # (N,) bool, true positives of AP^r@0.5 (match_image, the VOC rule)
    right: np.ndarray  # (N,) bool, right as pfn evaluate counts them (right_objects)
    num_gt: np.ndarray  # (C,) int64, true objects per class (those with a non-void pixel)
    labelled: np.ndarray  # (C,) bool, the classes the photo's source labels
    confusion: np.ndarray  # (C + 1, C + 1) int64 pixels, rows truth, columns the class map


def match_by_class(scores: np.ndarray, classes: np.ndarray, ious: np.ndarray,
                   gt_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tp, right)``, both ``(N,)`` bool, of the shown objects ``scores``/``classes``
    ``(N,)`` against the true ones of ``gt_classes`` ``(G,)`` (``ious`` ``(N, G)``), class by
    class: :func:`match_image` at IoU 0.5 (the AP) and :func:`right_objects` (the precision)."""
    tp = np.zeros(len(classes), dtype=bool)
    right = np.zeros(len(classes), dtype=bool)
    for k in np.unique(classes):
        p = classes == k
        sub = ious[np.ix_(p, gt_classes == k)]
        tp[p] = match_image(scores[p], sub, AP_IOU)
        right[p] = right_objects(scores[p], sub)
    return tp, right


def score_photo(sample, inst, semantic: np.ndarray, labelled: np.ndarray) -> PhotoScore:
    """Match ``inst`` (an ``Instances`` on the sample's classes) to the ``sample``'s true
    objects as :class:`~pfn_napari.evaluate.Evaluator` does (void pixels left out; by
    :func:`mask_ious`, then :func:`match_image` at IoU 0.5 for the AP and
    :func:`right_objects` for the precision); ``semantic`` ``(H, W)`` is the class map the
    setting ended with and ``labelled`` ``(C,)`` the classes the source labels."""
    c = len(labelled)
    gt_masks, gt_classes, void = visible_truth(sample)
    ious = mask_ious(inst.masks, gt_masks, void)  # (N, G)
    classes = np.asarray(inst.classes, dtype=np.int64)
    scores = np.asarray(inst.scores, dtype=np.float64)
    tp, right = match_by_class(scores, classes, ious, gt_classes)
    keep = sample.class_map != VOID
    confusion = pixel_confusion(sample.class_map[keep], semantic[keep], c)
    return PhotoScore(scores, classes, tp, right, np.bincount(gt_classes - 1, minlength=c)[:c],
                      np.asarray(labelled, dtype=bool), confusion)


def ap_half(photos) -> float:
    """AP^r@0.5 (percent) of the shown objects of ``photos`` (:class:`PhotoScore`), averaged
    over the classes with a true object there (NaN without any): the evaluation's VOC rule."""
    if not photos:
        return np.nan
    classes = np.concatenate([p.classes for p in photos])
    scores = np.concatenate([p.scores for p in photos])
    tp = np.concatenate([p.tp for p in photos])
    num_gt = np.sum([p.num_gt for p in photos], axis=0)  # (C,)
    aps = [average_precision(scores[classes == k + 1], tp[classes == k + 1], int(n))[0]
           for k, n in enumerate(num_gt) if n > 0]
    return 100 * float(np.mean(aps)) if aps else np.nan


def labelled_confusion(photo: PhotoScore) -> np.ndarray:
    """The photo's confusion with the pixels shown as a class its source does not label
    counted as background (a source that labels only people neither rewards nor punishes a
    car)."""
    confusion = photo.confusion.copy()
    hidden = np.flatnonzero(~photo.labelled) + 1  # class ids
    confusion[:, 0] += confusion[:, hidden].sum(axis=1)
    confusion[:, hidden] = 0
    return confusion


def miou(photos) -> float:
    """Mean IoU (percent) of the class maps of ``photos`` over the classes 0..C that occur
    (:func:`labelled_confusion`: the classes each source labels)."""
    if not photos:
        return np.nan
    confusion = np.sum([labelled_confusion(p) for p in photos], axis=0)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return 100 * float(np.mean(inter[union > 0] / union[union > 0])) if (union > 0).any() \
        else np.nan


def shown_right(photos) -> tuple[float, float]:
    """``(precision, false objects per photo)`` of the shown objects of the classes each
    photo's source labels: percent of them right (as ``pfn evaluate`` counts), and the
    others per photo."""
    shown = sum(int(p.labelled[p.classes - 1].sum()) for p in photos)
    right = sum(int((p.right & p.labelled[p.classes - 1]).sum()) for p in photos)
    precision = 100 * right / shown if shown else np.nan
    return precision, (shown - right) / len(photos) if photos else np.nan


#: What ``--folds`` chooses by (``--objective``): the mean AP^r@0.5 of the columns, or the
#: mean of that and the precision of the shown objects, or of that and the columns' mIoU.
OBJECTIVES = {"ap": "mean AP^r@0.5", "ap+precision": "mean of AP^r@0.5 and precision",
              "ap+miou": "mean of AP^r@0.5 and mIoU"}


def photo_metrics(photos, sources, objective: str = "ap") -> dict[str, float]:
    """The numbers of one setting on some photos (``sources``: each photo's source name):
    AP^r@0.5 of each :data:`AP_SOURCES` column that has photos here and their ``mean``,
    ``precision`` and ``false`` objects per photo (also of each column, e.g.
    ``"coco precision"``), the mIoU of each column (``"coco mIoU"``) and the ``objective``
    (:data:`OBJECTIVES`)."""
    out = {}
    for column, names in AP_SOURCES.items():
        members = [p for p, s in zip(photos, sources) if s in names]
        if members:
            out[column] = ap_half(members)
            out[f"{column} mIoU"] = miou(members)
            out[f"{column} precision"], out[f"{column} false"] = shown_right(members)
    aps = [out[c] for c in AP_SOURCES if c in out]
    out["mean"] = float(np.mean(aps)) if aps else np.nan
    out["precision"], out["false"] = shown_right(photos)
    other = {"ap": out["mean"], "ap+precision": out["precision"],
             "ap+miou": np.mean([out[f"{c} mIoU"] for c in AP_SOURCES if c in out] or np.nan)}
    out["objective"] = (out["mean"] + float(other[objective])) / 2
    return out


def stratified_folds(sources, k: int, seed: int = 0) -> np.ndarray:
    """``(N,)`` the fold 0..k-1 that holds each photo out (``sources``: each photo's source).
    Each source's photos (sources in sorted order) are shuffled by a generator seeded with
    ``seed`` and dealt to the folds in turn, each source starting at the fold after the last
    one dealt: every fold holds photos of every source and fold sizes differ by at most one."""
    sources = np.asarray(sources)
    names, counts = np.unique(sources, return_counts=True)
    if k < 2:
        raise PFNError(f"--folds {k}: cross-validation needs at least 2 folds")
    if counts.min() < k:
        raise PFNError(f"--folds {k}: the source {str(names[counts.argmin()])!r} has only "
                       f"{counts.min()} photos; every fold needs one of each source (at most "
                       f"{counts.min()} folds)")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(sources), dtype=np.int64)
    start = 0
    for name in names:
        members = rng.permutation(np.flatnonzero(sources == name))
        folds[members] = (start + np.arange(len(members))) % k
        start += len(members)
    return folds


def choose(objectives) -> int:
    """The index of the highest objective (the first, the simpler when listed first, on ties;
    NaN is never chosen unless all are NaN)."""
    values = np.asarray(objectives, dtype=np.float64)
    return int(np.nanargmax(values)) if np.isfinite(values).any() else 0


def chosen_per_fold(table, sources, folds, objective: str = "ap") -> list[int]:
    """For each fold f, the setting (row of ``table``: one :class:`PhotoScore` per photo) with
    the best ``objective`` on the photos of the other folds (the photos of fold f unseen)."""
    sources = np.asarray(sources)
    picks = []
    for f in range(int(folds.max()) + 1):
        train = np.flatnonzero(folds != f)
        picks.append(choose([photo_metrics([row[i] for i in train], sources[train],
                                           objective)["objective"] for row in table]))
    return picks


def held_metrics(row, sources, folds, f: int, objective: str = "ap") -> dict[str, float]:
    """:func:`photo_metrics` of one setting's row on the photos fold ``f`` holds out."""
    held = np.flatnonzero(folds == f)
    return photo_metrics([row[i] for i in held], np.asarray(sources)[held], objective)


def wins_every_fold(added, simpler) -> bool:
    """The rule: an added setting stays only if its held-fold objective beats the simpler
    one's on every fold (strictly: a tie or a NaN keeps the simpler)."""
    pairs = list(zip(added, simpler, strict=True))
    return bool(pairs) and all(a > b for a, b in pairs)


def weights_verdict(table, table_before, sources, folds, objective: str = "ap"
                    ) -> tuple[list[float], list[float], bool]:
    """Two weights files under the protocol (``--against``): each file's setting chosen per
    fold on the other folds (its own :func:`chosen_per_fold` over the same grid), then the held
    objective of the new file (``table``) and of the file it would replace (``table_before``)
    on each fold's photos, and whether the new one wins on every fold (:func:`wins_every_fold`,
    the rule that lets it replace the other)."""
    new, before = [], []
    for rows, out in ((table, new), (table_before, before)):
        picks = chosen_per_fold(rows, sources, folds, objective)
        out.extend(held_metrics(rows[i], sources, folds, f, objective)["objective"]
                   for f, i in enumerate(picks))
    return new, before, wins_every_fold(new, before)


def with_setting(setting: Setting, values: dict) -> Setting:
    """``setting`` with dotted ``grouping.*`` / ``imagenet.*`` fields replaced."""
    return Setting(
        with_fields(setting.grouping, {k.partition(".")[2]: v for k, v in values.items()
                                       if k.startswith("grouping.")}),
        with_fields(setting.imagenet, {k.partition(".")[2]: v for k, v in values.items()
                                       if k.startswith("imagenet.")}))


def setting_value(setting: Setting, name: str):
    """The value of a dotted ``grouping.*`` / ``imagenet.*`` field of ``setting``."""
    head, _, rest = name.partition(".")
    return field_of(setting.grouping if head == "grouping" else setting.imagenet, rest)


def varied_fields(settings: list) -> list[str]:
    """The dotted fields whose value differs between some of ``settings``, in grid order."""
    names = [f"grouping.{k}" for k in GRID_FIELDS] + ["imagenet.enabled"] + \
        [f"imagenet.{k}" for k in IMAGENET_FIELDS]
    return [n for n in names if len({repr(setting_value(s, n)) for s in settings}) > 1]


def short(setting: Setting, fields) -> str:
    """The ``fields`` of ``setting`` as ``name=value`` words (``grouping.`` left out)."""
    return " ".join(f"{n.removeprefix('grouping.')}={_cell(setting_value(setting, n))}"
                    for n in fields)


def pooled_sets(shared: Path, classes: tuple[str, ...], limit: int | None = None) -> list:
    """``[(source, dataset on classes, labelled (C,) bool)]``: the val splits and the COCO
    photos without a VOC object (the first ``limit`` photos of each)."""
    out = []
    for es in real_specs(shared):
        ds = open_set(es, "val", classes, limit=limit)
        if ds is not None:
            out.append((es.name, ds, np.array([es.classes is None or c in es.classes
                                               for c in classes])))
    negatives = no_voc_photos(shared, classes)
    if negatives is not None:
        if limit is not None and len(negatives) > limit:
            negatives = SubsetDataset(negatives, list(range(limit)))
        out.append((NEGATIVES, negatives, np.ones(len(classes), dtype=bool)))
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file (names the weights in the cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def score_pool(predictor: Predictor, settings: list, sets: list, cache: dict,
               weights_id: str, save=None) -> tuple[list, list[str], list[str]]:
    """``(table, sources, photo names)``: ``table[s][i]`` the :class:`PhotoScore` of setting
    ``s`` on photo ``i`` of ``sets`` (:func:`pooled_sets`). ``cache`` maps (weights, photo,
    setting) to scores already computed (as plain tuples) and gets the new ones; the networks
    run once for each photo that misses a setting. ``save()`` is called after each source
    that added scores."""
    classes = tuple(predictor.class_names)
    table: list[list] = [[] for _ in settings]
    sources, names = [], []
    for source, ds, labelled in sets:
        lut = class_lut(classes, tuple(ds.classes))
        before = len(cache)
        for index in tqdm(range(len(ds)), desc=source, unit="img"):
            name = f"{source}/{ds.image_ids[index]}"
            keys = [(weights_id, name, repr(s)) for s in settings]
            if any(key not in cache for key in keys):
                sample = ds[index]
                predictor.set_image(sample.image, name=str(sample.image_id),
                                    image_id=sample.image_id)
                for setting, key in zip(settings, keys):
                    if key not in cache:
                        inst = to_data_classes(predictor.instances(
                            setting.grouping, imagenet=setting.imagenet), lut, sample.image_id)
                        semantic = lut[predictor.class_map()].astype(np.uint8)  # (H, W)
                        cache[key] = tuple(score_photo(sample, inst, semantic, labelled))
            for row, key in zip(table, keys):
                row.append(PhotoScore(*cache[key]))
            sources.append(source)
            names.append(name)
        if save is not None and len(cache) > before:
            save()
    return table, sources, names


def read_cache(path: Path | None) -> dict:
    """The scores cached at ``path`` (empty when there is none yet)."""
    if path is None or not path.exists():
        return {}
    try:
        with open(path, "rb") as fh:
            cache = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise PFNError(f"--cache {path}: not a score cache of this script ({exc}); remove it "
                       "or name another file") from None
    if not isinstance(cache, dict):
        raise PFNError(f"--cache {path}: not a score cache of this script; remove it or name "
                       "another file")
    return cache


def simple_setting(cfg) -> Setting:
    """The simple baseline: the paper's reading where there is one, on the weights' method
    (``cfg``: their config): the count head alone, the config's default tau, sigma and size
    floor, no ImageNet step (switched off, its check off; its other fields the weights')."""
    plain = GroupingConfig()
    grouping = dataclasses.replace(cfg.grouping, tau=plain.tau, sigma=plain.sigma,
                                   min_size_frac=plain.min_size_frac, count_source="head")
    return Setting(grouping, with_fields(cfg.imagenet, {"enabled": False,
                                                        "check.enabled": False}))


def fold_sizes(sources, folds) -> list[str]:
    """Markdown table: the photos each fold holds out, per source."""
    names = sorted(set(sources))
    lines = ["| fold | " + " | ".join(names) + " | photos |", "|---:|" + "---:|" * (len(names) + 1)]
    sources = np.asarray(sources)
    for f in range(int(folds.max()) + 1):
        held = sources[folds == f]
        lines.append(f"| {f + 1} | " + " | ".join(str(int((held == n).sum())) for n in names)
                     + f" | {held.size} |")
    return lines


def _num(value: float, digits: int = 1, sign: str = "") -> str:
    """A table number (``sign`` "+": signed), '-' where it is undefined."""
    return "-" if not np.isfinite(value) else f"{value:{sign}.{digits}f}"


def _digits(key: str) -> int:
    """Decimals of a metric: false objects per photo get two."""
    return 2 if key.endswith("false") else 1


def metrics_cells(m: dict) -> str:
    """The held numbers of one setting as table cells: AP per column, mean, precision, false
    objects per photo."""
    return " | ".join([_num(m.get(c, np.nan)) for c in AP_SOURCES] + [
        _num(m["mean"]), _num(m["precision"]), _num(m["false"], 2)])


METRIC_HEADER = (" | ".join(f"{c} AP" for c in AP_SOURCES)
                 + " | mean AP | precision % | false / photo")


def fold_table(table, settings, sources, folds, picks, rows: dict[str, int], fields,
               objective: str = "ap") -> list:
    """Markdown: for each fold the setting chosen on the other folds, then the ``rows``
    (name -> setting index) for comparison, each with its objective on the other folds and
    its held-fold numbers."""
    lines = ["| fold | setting | | objective, other folds (chooses) | " + METRIC_HEADER
             + " | objective |", "|---:|---|---|---:|" + "---:|" * (len(AP_SOURCES) + 4)]
    sources = np.asarray(sources)
    for f, pick in enumerate(picks):
        train = np.flatnonzero(folds != f)
        for name, i in [("chosen", pick), *rows.items()]:
            seen = photo_metrics([table[i][j] for j in train], sources[train],
                                 objective)["objective"]
            held = held_metrics(table[i], sources, folds, f, objective)
            lines.append(f"| {f + 1} | {name} | {short(settings[i], fields)} | {_num(seen)} | "
                         + metrics_cells(held) + f" | {_num(held['objective'])} |")
    return lines


#: Fields read only when another is on: such a field stays only if that one stays too.
PARENT_FIELDS = {f"imagenet.{k}": "imagenet.enabled" for k in PRIOR_FIELDS}


def field_rule(table, settings, sources, folds, picks, simple: Setting, fields,
               base: tuple, objective: str = "ap") -> tuple[list, dict[str, bool]]:
    """The rule per varied field: in each fold, the held ``objective`` of the chosen setting
    minus that of the chosen setting with the field at the simple value ('-': the fold chose
    the simple value, a loss). ``base``: the grid's (grouping, imagenet) bases for
    :func:`canonical`. Returns the markdown and ``{field: stays}``."""
    index = {s: i for i, s in enumerate(settings)}
    k = len(picks)
    lines = ["| added field | " + " | ".join(f"fold {f + 1}" for f in range(k))
             + " | stays? |", "|---|" + "---:|" * k + "---|"]
    stays, rows = {}, []
    for name in fields:
        simple_value = setting_value(simple, name)
        cells, added, simpler = [], [], []
        for f, pick in enumerate(picks):
            chosen = settings[pick]
            other = index.get(canonical(with_setting(chosen, {name: simple_value}), *base))
            if setting_value(chosen, name) == simple_value or other is None:
                cells.append("-")
                added.append(np.nan)
                simpler.append(np.nan)
                continue
            a = held_metrics(table[pick], sources, folds, f, objective)["objective"]
            b = held_metrics(table[other], sources, folds, f, objective)["objective"]
            cells.append(f"{_cell(setting_value(chosen, name))}: {a - b:+.1f}")
            added.append(a)
            simpler.append(b)
        stays[name] = wins_every_fold(added, simpler)
        rows.append(f"| {name} (simple: {_cell(simple_value)}) | " + " | ".join(cells))
    for name, row in zip(fields, rows):
        parent = PARENT_FIELDS.get(name)
        if stays[name] and not stays.get(parent, True):  # read only when the parent is on
            stays[name] = False
            lines.append(f"{row} | no (it needs {parent}) |")
        else:
            lines.append(f"{row} | {'yes' if stays[name] else 'no'} |")
    return lines, stays


def imagenet_table(table, settings, sources, folds, picks, steps: dict[str, ImageNetConfig],
                   base: tuple) -> list:
    """Markdown: per fold, the grouping as chosen with each ImageNet ``steps`` variant: the
    held AP per column and mean, precision, false objects per photo and mIoU per column."""
    index = {s: i for i, s in enumerate(settings)}
    lines = ["| fold | ImageNet step | " + METRIC_HEADER + " | "
             + " | ".join(f"{c} mIoU" for c in AP_SOURCES) + " |",
             "|---:|---|" + "---:|" * (2 * len(AP_SOURCES) + 3)]
    keys = [*AP_SOURCES, "mean", "precision", "false", *(f"{c} mIoU" for c in AP_SOURCES)]
    for f, pick in enumerate(picks):
        held = []
        for name, step in steps.items():
            i = index.get(canonical(Setting(settings[pick].grouping, step), *base))
            if i is None:
                continue
            held.append(held_metrics(table[i], sources, folds, f))
            lines.append(f"| {f + 1} | {name} | "
                         + " | ".join(_num(held[-1].get(k, np.nan), _digits(k)) for k in keys)
                         + " |")
        if len(held) == len(steps):  # the last step minus the first
            gains = [held[-1].get(k, np.nan) - held[0].get(k, np.nan) for k in keys]
            lines.append(f"| {f + 1} | gain, {name} - {next(iter(steps))} | "
                         + " | ".join(_num(g, _digits(k), "+") for g, k in zip(gains, keys))
                         + " |")
    return lines


def pooled_held(table, picks, folds) -> list:
    """Each photo scored by the setting its fold chose (``picks``) without it: the
    cross-validated estimate of the whole procedure, choosing included."""
    return [table[picks[f]][j] for j, f in enumerate(folds)]


def summary_table(rows: dict[str, list], sources) -> list:
    """Markdown: per row (name -> one :class:`PhotoScore` per photo) and per column, AP^r@0.5,
    precision, false objects per photo and mIoU, then all photos' precision and false."""
    head = " | ".join(f"{c} AP | {c} precision % | {c} false / photo | {c} mIoU"
                      for c in AP_SOURCES)
    lines = [f"| | {head} | mean AP | all: precision % | all: false / photo |",
             "|---|" + "---:|" * (4 * len(AP_SOURCES) + 3)]
    for name, photos in rows.items():
        m = photo_metrics(photos, sources)
        cells = [_num(m.get(f"{c}{k}", np.nan), _digits(k))
                 for c in AP_SOURCES for k in ("", " precision", " false", " mIoU")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_num(m['mean'])} | "
                     f"{_num(m['precision'])} | {_num(m['false'], 2)} |")
    return lines


def decided(settings, table, sources, simple: Setting, stays: dict[str, bool], picks,
            objective: str = "ap") -> int:
    """The default the rule gives: among the settings with every field that does not stay at
    its simple value and every field that stays at a value the folds chose (``picks``), the
    best ``objective`` on all the pooled photos."""
    def allowed_value(setting: Setting, name: str, stays_: bool) -> bool:
        if not stays_:
            return setting_value(setting, name) == setting_value(simple, name)
        return any(setting_value(setting, name) == setting_value(settings[p], name)
                   for p in picks)

    allowed = [i for i, s in enumerate(settings)
               if all(allowed_value(s, n, ok) for n, ok in stays.items())]
    return allowed[choose([photo_metrics(table[i], sources, objective)["objective"]
                           for i in allowed])]


def dotted_values(setting: Setting, fields) -> list[str]:
    """The ``fields`` of ``setting`` as ``section.field: value`` lines (YAML's spelling of
    the values; the weights' YAML nests them under their sections)."""
    out = []
    for n in fields:
        value = setting_value(setting, n)
        out.append(f"{n}: {str(value).lower() if isinstance(value, bool) else _cell(value)}")
    return out


def fold_settings(args, cfg) -> tuple[list, Setting, tuple]:
    """The settings ``--folds`` scores on the weights' config ``cfg``: the simple one first,
    the weights' own second, then the grid (duplicates dropped); with the simple setting and
    the base its settings are written over."""
    simple = simple_setting(cfg)
    base = (cfg.grouping, simple.imagenet)
    shipped = canonical(Setting(cfg.grouping, cfg.imagenet), *base)
    grid = grid_of(args, cfg, simple.imagenet)
    return list(dict.fromkeys([canonical(simple, *base), shipped, *grid])), simple, base


def run_folds(args, predictor: Predictor, cfg, shared: Path) -> int:
    """``--folds K``: score the grid on the pooled photos (cached), choose per fold, report."""
    settings, simple, base = fold_settings(args, cfg)
    cache = read_cache(args.cache)
    weights_id = file_digest(args.weights)
    sets = pooled_sets(shared, tuple(predictor.class_names), args.limit)
    save = None if args.cache is None else \
        (lambda: atomic_write(args.cache, lambda fh: pickle.dump(cache, fh)))
    table, sources, _ = score_pool(predictor, settings, sets, cache, weights_id, save)
    folds = stratified_folds(sources, args.folds, args.seed)
    objective = args.objective
    picks = chosen_per_fold(table, sources, folds, objective)
    fields = varied_fields(settings)
    print(f"{len(settings)} settings, {len(sources)} photos, {args.folds} folds (seed "
          f"{args.seed}); the varied fields: {', '.join(fields)}; the objective: "
          f"{OBJECTIVES[objective]}\n")
    print("\n".join(fold_sizes(sources, folds)) + "\n")
    print("Each fold's numbers are on the photos it holds out (not used to choose its "
          "setting); 'objective, other folds' chose it.\n")
    print("\n".join(fold_table(table, settings, sources, folds, picks,
                               {"simple": 0, "shipped": 1}, fields, objective)) + "\n")
    rule, stays = field_rule(table, settings, sources, folds, picks, simple, fields, base,
                             objective)
    print("The rule per added field: held objective of the chosen setting minus the same with "
          "the field at its simple value.\n")
    print("\n".join(rule) + "\n")
    for name, (added, simpler) in {"chosen": (picks, [0] * len(picks)),
                                   "shipped": ([1] * len(picks), [0] * len(picks))}.items():
        a = [held_metrics(table[i], sources, folds, f, objective)["objective"]
             for f, i in enumerate(added)]
        b = [held_metrics(table[i], sources, folds, f, objective)["objective"]
             for f, i in enumerate(simpler)]
        print(f"{name} vs simple, held objective per fold: "
              + ", ".join(f"{x - y:+.1f}" for x, y in zip(a, b))
              + f" (wins on every fold: {'yes' if wins_every_fold(a, b) else 'no'})")
    print("\nEvery photo held out once, pooled over the folds (chosen: each photo under the "
          "setting its fold chose without it):\n")
    print("\n".join(summary_table({"simple": table[0], "shipped": table[1],
                                   "chosen per fold": pooled_held(table, picks, folds)},
                                  sources)))
    steps = {"off": simple.imagenet,
             "on, check off": with_fields(cfg.imagenet, {"enabled": True, "check.enabled": False}),
             "on, check on": with_fields(cfg.imagenet, {"enabled": True, "check.enabled": True})}
    print("\nThe ImageNet step on the held photos, the rest of the setting as each fold chose:\n")
    print("\n".join(imagenet_table(table, settings, sources, folds, picks, steps, base)) + "\n")
    best = decided(settings, table, sources, simple, stays, picks, objective)
    m = photo_metrics(table[best], sources, objective)
    print(f"the rule's default (chosen on all {len(sources)} photos, so its numbers here are "
          f"used for choosing: mean AP^r@0.5 {m['mean']:.1f}, precision {m['precision']:.1f}, "
          f"objective {m['objective']:.1f}): {short(settings[best], fields)}")
    print("\n".join(dotted_values(settings[best], fields)))
    if args.against is not None:
        against_weights(args, settings, sets, cache, save, table, sources, folds)
    return 0


def against_weights(args, settings: list, sets: list, cache: dict, save, table, sources,
                    folds) -> None:
    """``--against W0``: the same grid on the same photos with the networks of ``W0`` (the
    file ``--weights`` would replace), each file choosing its setting per fold; prints the held
    objective of both per fold and whether ``--weights`` wins on every fold."""
    before = Predictor(str(args.against))  # its file and classes were checked by main()
    table_before, _, _ = score_pool(before, settings, sets, cache, file_digest(args.against),
                                    save)
    new, old, wins = weights_verdict(table, table_before, sources, folds, args.objective)
    print(f"\n{args.weights} against {args.against} (each with the setting its fold chose on "
          "the other folds), held objective per fold:\n")
    print("| file | " + " | ".join(f"fold {f + 1}" for f in range(len(new))) + " |")
    print("|---|" + "---:|" * len(new))
    for name, values in ((args.weights, new), (args.against, old)):
        print(f"| {name} | " + " | ".join(_num(v) for v in values) + " |")
    print("\ndifference per fold: " + ", ".join(f"{a - b:+.1f}" for a, b in zip(new, old))
          + f" (wins on every fold, so it may replace {args.against}: "
          f"{'yes' if wins else 'no'})\n")
    pooled = {name: pooled_held(rows, chosen_per_fold(rows, sources, folds, args.objective),
                                folds)
              for name, rows in ((str(args.weights), table),
                                 (str(args.against), table_before))}
    print("\n".join(summary_table(pooled, sources)))



def grid_of(args, cfg, imagenet: ImageNetConfig) -> list:
    """The grid the command line asks for, over the weights' config ``cfg`` (the step's
    fields over ``imagenet``)."""
    on = {"on": True, "off": False}
    return settings_grid(cfg.grouping, args.tau, args.sigma, args.min_size,
                         args.method or [cfg.grouping.method], imagenet=imagenet,
                         more={"grouping.count_source": args.count_source,
                               "grouping.refine": [on[v] for v in args.refine or []],
                               "grouping.votes.iou": args.votes_iou,
                               "grouping.votes.min_frac": args.votes_min_frac,
                               "grouping.votes.merge_iou": args.votes_merge_iou,
                               "imagenet.enabled": [on[v] for v in args.imagenet_enabled or []],
                               "imagenet.weight": args.imagenet_weight,
                               "imagenet.eps": args.imagenet_eps,
                               "imagenet.min_frac": args.imagenet_min_frac,
                               "imagenet.touch": args.imagenet_touch,
                               "imagenet.check.enabled":
                                   [on[v] for v in args.imagenet_check or []],
                               "imagenet.shape": args.imagenet_shape})

def parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--tau", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.5])
    ap.add_argument("--min-size", type=float, nargs="+", default=[0.001],
                    help="grouping.min_size_frac values")
    ap.add_argument("--method", nargs="+", default=None,
                    help="grouping methods (default: the weights' own)")
    ap.add_argument("--count-source", nargs="+", default=None,
                    help="grouping.count_source values: head, votes, mean (default: the weights' own)")
    ap.add_argument("--refine", choices=("on", "off"), nargs="+", default=None,
                    help="grouping.refine values: the class map refined by the counts (the "
                         "paper's step; default: the weights' own)")
    # each option is the config field of its name; the second spelling is the older name
    # (kept: the record of experiments quotes commands with it)
    ap.add_argument("--votes-iou", "--vote-iou", type=float, nargs="+", default=None,
                    help="grouping.votes.iou values")
    ap.add_argument("--votes-min-frac", "--vote-min-frac", type=float, nargs="+", default=None,
                    help="grouping.votes.min_frac values")
    ap.add_argument("--votes-merge-iou", "--vote-merge-iou", type=float, nargs="+",
                    default=None, help="grouping.votes.merge_iou values")
    ap.add_argument("--imagenet-weight", "--prior-weight", type=float, nargs="+", default=None,
                    help="imagenet.weight values (0: no ImageNet step)")
    ap.add_argument("--imagenet-eps", "--prior-eps", type=float, nargs="+", default=None)
    ap.add_argument("--imagenet-min-frac", "--prior-min-frac", type=float, nargs="+",
                    default=None)
    ap.add_argument("--imagenet-touch", "--prior-touch", type=float, nargs="+", default=None)
    ap.add_argument("--imagenet-enabled", choices=("on", "off"), nargs="+", default=None,
                    help="imagenet.enabled values: the ImageNet step switched on or off")
    ap.add_argument("--imagenet-check", "--prior-check", choices=("on", "off"), nargs="+",
                    default=None, help="imagenet.check.enabled: the ImageNet classifier checks "
                                       "each object's crop")
    ap.add_argument("--imagenet-shape", "--prior-shape", choices=("region", "grabcut"),
                    nargs="+", default=None, help="imagenet.shape values")
    ap.add_argument("--objective", choices=tuple(OBJECTIVES), default="ap",
                    help="choose by the mean AP^r@0.5 over the splits, or by the mean of that "
                         "and the splits' mean mIoU, or (--folds only) of that and the "
                         "precision of the shown objects")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each split")
    ap.add_argument("--folds", type=int, default=None, metavar="K",
                    help="K-fold cross-validation over every labelled photo not trained on "
                         "(the val splits and the COCO photos without a VOC object), stratified "
                         "by source: each fold's setting is chosen on the other folds")
    ap.add_argument("--seed", type=int, default=0, help="--folds: the seed of the split")
    ap.add_argument("--against", type=Path, default=None,
                    help="--folds: the weights file --weights would replace (e.g. the shipped "
                         "one): the same grid and folds, each file choosing per fold; says "
                         "whether --weights wins on every fold")
    ap.add_argument("--cache", type=Path, default=None,
                    help="--folds: a file keeping each photo's scores per setting (reused)")
    ap.add_argument("--save", type=Path, default=None,
                    help="write a copy of the weights with the best setting (a new file)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.against is not None and args.folds is None:
        print("tune_grouping: --against needs --folds (two files are compared fold by fold)",
              file=sys.stderr)
        return 2
    shared = find_shared_data()
    if shared is None:
        print("tune_grouping: the real data (../shared/data or $PFN_SHARED_DATA) was not found",
              file=sys.stderr)
        return 2
    if args.objective == "ap+precision" and args.folds is None:
        print("tune_grouping: --objective ap+precision needs --folds (the val-split table has "
              "no precision)", file=sys.stderr)
        return 2
    if args.save is not None and args.folds is not None:
        print("tune_grouping: --save is not used with --folds (it prints the rule's default; "
              "set it with --set or in the weights' YAML)", file=sys.stderr)
        return 2
    if args.save is not None and args.save.exists():  # also when it names --weights
        print(f"tune_grouping: {args.save} exists; --save writes a new file", file=sys.stderr)
        return 2
    try:
        system, cfg, meta = load_checkpoint(args.weights)
    except PFNError as exc:  # missing, truncated or foreign file: one line naming it
        print(f"tune_grouping: {exc}", file=sys.stderr)
        return 2
    if args.against is not None:  # before the networks run over every photo
        try:
            stored = read_checkpoint(args.against)
            against = config_of(stored, args.against).data.classes
        except PFNError as exc:
            print(f"tune_grouping: --against {exc}", file=sys.stderr)
            return 2
        if set(stored.get("networks") or {}) == {"category"}:
            print(f"tune_grouping: --against {args.against}: holds only the category network "
                  "(stage 1); compare files that make instances", file=sys.stderr)
            return 2
        if tuple(against) != tuple(cfg.data.classes):
            print(f"tune_grouping: --against {args.against}: its classes {list(against)} are not "
                  f"those of --weights {args.weights}; compare files of one model",
                  file=sys.stderr)
            return 2
    if args.folds is not None:
        try:
            return run_folds(args, Predictor(str(args.weights)), cfg, shared)
        except PFNError as exc:
            print(f"tune_grouping: {exc}", file=sys.stderr)
            return 2
    settings = grid_of(args, cfg, cfg.imagenet)
    results = evaluate_settings(Predictor(str(args.weights)), settings, shared, args.limit)
    names = list(results)
    print("| method | tau | sigma | min size | count source | vote iou | vote min | vote merge | "
          "prior weight | eps | min | touch | check | shape | " + " | ".join(names) + " | mean | COCO person AP | "
          "PF person count error | " + " | ".join(f"{n} mIoU" for n in names) + " |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
          + "---:|" * (2 * len(names) + 3))
    means = []
    for i, (g, step) in enumerate(settings):
        aps = [results[n][i].ap_r["0.5"] for n in names]
        mious = [results[n][i].miou for n in names]
        means.append(float(np.mean(aps)) if args.objective == "ap" else
                     float(np.mean(aps) + np.mean(mious)) / 2)
        pf = person_count_error(results["pennfudan"][i]) if "pennfudan" in results else np.nan
        coco = person_ap(results["coco-voc"][i]) if "coco-voc" in results else np.nan
        votes = ("-",) * 3 if g.count_source == "head" else \
            tuple(f"{field_of(g, k):g}" for k in VOTE_FIELDS)
        prior = (f"{step.weight:g}",) + (("-",) * 5 if step.weight == 0 else
                                         tuple(_cell(field_of(step, k)) for k in PRIOR_FIELDS))
        print(f"| {g.method} | {g.tau:g} | {g.sigma:g} | {g.min_size_frac:g} | {g.count_source} | "
              + " | ".join(votes + prior) + " | " + " | ".join(f"{a:.1f}" for a in aps)
              + f" | {means[-1]:.1f} | {coco:.1f} | {pf:.2f} | "
              + " | ".join(f"{m:.1f}" for m in mious) + " |")
    objective = "mean AP^r@0.5" if args.objective == "ap" else "mean of AP^r@0.5 and mIoU"
    best = settings[int(np.argmax(means))]
    print(f"best ({objective} {max(means):.1f}): {describe(best)}")
    if args.save is not None:
        meta = run_meta(meta)
        meta["notes"] = [*meta.get("notes", []), f"Grouping defaults chosen on the val splits by "
                         f"scripts/tune_grouping.py: {describe(best)} "
                         f"({objective} {max(means):.1f})."]
        path = save_weights(args.save, system, dataclasses.replace(
            cfg, grouping=best.grouping, imagenet=best.imagenet), meta, half=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
