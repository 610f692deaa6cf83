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
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from pfn_napari.checkpoint import load_checkpoint, run_meta, save_weights
from pfn_napari.config import GroupingConfig, ImageNetConfig
from pfn_napari.demo import find_shared_data, open_set, real_specs
from pfn_napari.errors import PFNError
from pfn_napari.evaluate import Evaluator
from pfn_napari.predictor import Predictor
from pfn_napari.producers import class_lut, to_data_classes


#: ``GroupingConfig`` fields the grid varies (dotted below the section, as ``--set`` names
#: them), in the table's column order.
GRID_FIELDS = ("method", "tau", "sigma", "min_size_frac", "count_source", "votes.iou",
               "votes.min_frac", "votes.merge_iou")
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
    count source, or in the ImageNet fields of a step with weight 0, are listed once."""
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
        if g.count_source == "head":
            g = dataclasses.replace(g, votes=base.votes)
        if step.weight == 0:
            step = with_fields(step, {k: field_of(imagenet, k) for k in PRIOR_FIELDS})
        if Setting(g, step) not in seen:
            seen.add(Setting(g, step))
            grid.append(Setting(g, step))
    return grid


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


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--imagenet-check", "--prior-check", choices=("on", "off"), nargs="+",
                    default=None, help="imagenet.check.enabled: the ImageNet classifier checks "
                                       "each object's crop")
    ap.add_argument("--imagenet-shape", "--prior-shape", choices=("region", "grabcut"),
                    nargs="+", default=None, help="imagenet.shape values")
    ap.add_argument("--objective", choices=("ap", "ap+miou"), default="ap",
                    help="choose by the mean AP^r@0.5 over the splits, or by the mean of that "
                         "and the splits' mean mIoU")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each split")
    ap.add_argument("--save", type=Path, default=None,
                    help="write a copy of the weights with the best setting (a new file)")
    args = ap.parse_args(argv)
    shared = find_shared_data()
    if shared is None:
        print("tune_grouping: the real data (../shared/data or $PFN_SHARED_DATA) was not found",
              file=sys.stderr)
        return 2
    if args.save is not None and args.save.exists():  # also when it names --weights
        print(f"tune_grouping: {args.save} exists; --save writes a new file", file=sys.stderr)
        return 2
    try:
        system, cfg, meta = load_checkpoint(args.weights)
    except PFNError as exc:  # missing, truncated or foreign file: one line naming it
        print(f"tune_grouping: {exc}", file=sys.stderr)
        return 2
    settings = settings_grid(cfg.grouping, args.tau, args.sigma, args.min_size,
                             args.method or [cfg.grouping.method], imagenet=cfg.imagenet,
                             more={"grouping.count_source": args.count_source,
                                   "grouping.votes.iou": args.votes_iou,
                                   "grouping.votes.min_frac": args.votes_min_frac,
                                   "grouping.votes.merge_iou": args.votes_merge_iou,
                                   "imagenet.weight": args.imagenet_weight,
                                   "imagenet.eps": args.imagenet_eps,
                                   "imagenet.min_frac": args.imagenet_min_frac,
                                   "imagenet.touch": args.imagenet_touch,
                                   "imagenet.check.enabled":
                                       [v == "on" for v in args.imagenet_check or []],
                                   "imagenet.shape": args.imagenet_shape})
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
