"""Choose a model's grouping defaults on the real val splits: the networks run once per image,
then every grouping setting of a small grid groups the same output.

    python scripts/tune_grouping.py --weights runs/v6/pfn-lite0-voc.pt
    python scripts/tune_grouping.py --weights W --tau 0.2 0.35 0.5 --sigma 0.5 1.0 \
        --save runs/v6/pfn-lite0-voc-tuned.pt      # a copy of W with the best setting

Prints one row per setting: AP^r@0.5 on each real val split of ``../shared/data`` (COCO photos
in VOC layout, Penn-Fudan, Weizmann horses), their mean (the choice), and the mean absolute
error of the per-image person count on Penn-Fudan. Tune on these val splits only: the photos
the shipped weights are checked on are kept elsewhere. ``--save`` writes a new file (never
the weights read) with the best setting as its ``grouping`` config; everything else is copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pfn_napari.checkpoint import load_checkpoint, run_meta, save_weights
from pfn_napari.demo import find_shared_data, open_set, real_specs
from pfn_napari.errors import PFNError
from pfn_napari.evaluate import Evaluator
from pfn_napari.predictor import Predictor
from pfn_napari.producers import class_lut, to_data_classes


def settings_grid(base, taus, sigmas, min_sizes, methods) -> list:
    """Every combination of the given values over ``base`` (a ``GroupingConfig``)."""
    return [dataclasses.replace(base, tau=t, sigma=s, min_size_frac=m, method=meth)
            for t, s, m, meth in itertools.product(taus, sigmas, min_sizes, methods)]


def evaluate_settings(predictor: Predictor, settings: list, shared: Path,
                      limit: int | None = None) -> dict[str, list]:
    """``{set name: [Metrics per setting]}`` over the real val splits (the first ``limit``
    images of each); the networks run once per image."""
    classes = tuple(predictor.class_names)
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
            semantic = lut[predictor.class_map()].astype(np.uint8)  # (H, W)
            for setting, ev in zip(settings, evaluators):
                inst = to_data_classes(predictor.instances(setting), lut, sample.image_id)
                ev.add(sample, inst, semantic)
        out[es.name] = [ev.result() for ev in evaluators]
    return out


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
                             args.method or [cfg.grouping.method])
    results = evaluate_settings(Predictor(str(args.weights)), settings, shared, args.limit)
    names = list(results)
    print("| method | tau | sigma | min size | " + " | ".join(names)
          + " | mean | PF person count error |")
    print("|---|---:|---:|---:|" + "---:|" * (len(names) + 2))
    means = []
    for i, g in enumerate(settings):
        aps = [results[n][i].ap_r["0.5"] for n in names]
        means.append(float(np.mean(aps)))
        pf = person_count_error(results["pennfudan"][i]) if "pennfudan" in results else np.nan
        print(f"| {g.method} | {g.tau:g} | {g.sigma:g} | {g.min_size_frac:g} | "
              + " | ".join(f"{a:.1f}" for a in aps) + f" | {means[-1]:.1f} | {pf:.2f} |")
    best = settings[int(np.argmax(means))]
    print(f"best (mean AP^r@0.5 {max(means):.1f}): method={best.method} tau={best.tau:g} "
          f"sigma={best.sigma:g} min_size_frac={best.min_size_frac:g}")
    if args.save is not None:
        meta = run_meta(meta)
        meta["notes"] = [*meta.get("notes", []), f"Grouping defaults chosen on the val splits by "
                         f"scripts/tune_grouping.py: tau {best.tau:g}, sigma {best.sigma:g}, "
                         f"min_size_frac {best.min_size_frac:g} (mean AP^r@0.5 {max(means):.1f})."]
        path = save_weights(args.save, system, dataclasses.replace(cfg, grouping=best), meta,
                            half=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
