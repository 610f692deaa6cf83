"""Fit the mask-quality score (``grouping.scoring=quality``) by K-fold cross-validation by photo.

    python scripts/fit_quality.py --weights weights/pfn-lite0-voc.pt --folds 5 \
        --cache /tmp/quality_cache.pkl [--save-config quality.yaml]

The photos, the folds and the numbers are those of ``scripts/tune_grouping.py --folds``
(docs/experiments/cv-settings.md): every labelled photo the networks were not trained on (the
three val splits and the COCO photos without a VOC object), K folds stratified by source. The
networks run once per photo with the weights' own test-time settings; each shown object keeps
its ``config.QUALITY_FEATURES`` (``grouping/quality.py``) and its IoUs with the photo's true
objects (cached in ``--cache``). An object is right as ``pfn evaluate`` counts it (IoU >= 0.5
with a true object of its class); objects of a class their photo's source does not label are
left out of the fit and of the precision.

For each fold, a logistic regression (scikit-learn, features standardised, L2 with ``--C``) is
fitted on the objects of the other folds, and its ``min_score`` is chosen there: the largest
threshold that keeps ``--keep`` of the right objects. The mean class probability (today's
score) gets a threshold by the same rule. The fold's own photos are then read four ways:
today's score with no threshold, today's score with its threshold, the quality score with none
and with its threshold: AP^r@0.5 per column (of the shown objects), precision and false
objects per photo. ``--save-config FILE`` writes the weights and threshold fitted on every
photo as YAML (a new file; the weights file is never touched).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pickle
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tune_grouping, beside this file

import tune_grouping as tg  # noqa: E402

from pfn_napari.checkpoint import load_checkpoint  # noqa: E402
from pfn_napari.config import QUALITY_FEATURES, GroupingConfig  # noqa: E402
from pfn_napari.demo import find_shared_data  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.evaluate import mask_ious, visible_truth  # noqa: E402
from pfn_napari.grouping.quality import quality_score  # noqa: E402
from pfn_napari.inference import resize_instances  # noqa: E402
from pfn_napari.output import atomic_write, atomic_write_text  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402
from pfn_napari.producers import class_lut, to_data_classes  # noqa: E402


class PhotoObjects(NamedTuple):
    """One photo's shown objects, before any score: what the folds refit on (cached)."""

    features: np.ndarray  # (N, F) float64 QUALITY_FEATURES of each shown object
    classes: np.ndarray  # (N,) int64 their classes 1..C
    ious: np.ndarray  # (N, G) float32 IoU with each true object (void left out)
    gt_classes: np.ndarray  # (G,) int64 the true objects' classes
    labelled: np.ndarray  # (C,) bool the classes the photo's source labels


def quality_grouping(grouping: GroupingConfig) -> GroupingConfig:
    """The weights' grouping, scored by quality (the objects are the same: the scoring changes
    only the scores; the features are kept in ``GroupingResult.features``)."""
    return dataclasses.replace(grouping, scoring="quality")


def cache_key(weights_id: str, name: str, grouping: GroupingConfig) -> tuple:
    """The cache key of one photo: the weights, the photo and the grouping without its
    quality weights (they change no feature)."""
    return ("quality-features", weights_id, name, repr(dataclasses.replace(grouping, quality=())))


def photo_objects(predictor: Predictor, grouping: GroupingConfig, sample, lut: np.ndarray,
                  labelled: np.ndarray) -> PhotoObjects:
    """Group the predictor's current image and match its shown objects to ``sample``'s."""
    result = predictor.group(grouping)
    inst = resize_instances(result.instances, predictor.image_size)
    known = lut[inst.classes] > 0  # (N,) classes of the data (every shown one, here)
    inst = to_data_classes(inst, lut, sample.image_id)
    gt_masks, gt_classes, void = visible_truth(sample)
    ious = mask_ious(inst.masks, gt_masks, void)  # (N, G)
    return PhotoObjects(result.features[known], np.asarray(inst.classes, np.int64),
                        np.asarray(ious, np.float32).reshape(len(inst), len(gt_classes)),
                        np.asarray(gt_classes, np.int64), np.asarray(labelled, bool))


def collect(predictor: Predictor, grouping: GroupingConfig, sets: list, cache: dict,
            weights_id: str, save=None) -> tuple[list[PhotoObjects], list[str]]:
    """``(objects of each photo, source of each photo)`` over ``sets``
    (``tune_grouping.pooled_sets``); the networks run only for photos not in ``cache``;
    ``save()`` is called after each source that added photos."""
    classes = tuple(predictor.class_names)
    photos, sources = [], []
    for source, ds, labelled in sets:
        lut = class_lut(classes, tuple(ds.classes))
        before = len(cache)
        for index in tqdm(range(len(ds)), desc=source, unit="img"):
            key = cache_key(weights_id, f"{source}/{ds.image_ids[index]}", grouping)
            if key not in cache:
                sample = ds[index]
                predictor.set_image(sample.image, name=str(sample.image_id),
                                    image_id=sample.image_id)
                cache[key] = tuple(photo_objects(predictor, grouping, sample, lut, labelled))
            photos.append(PhotoObjects(*cache[key]))
            sources.append(source)
        if save is not None and len(cache) > before:
            save()
    return photos, sources


# ----------------------------------------------------------------------------- scores, metrics
def scored(photo: PhotoObjects, scores: np.ndarray, min_score: float = 0.0) -> tg.PhotoScore:
    """The photo's objects scored ``scores`` ``(N,)``, those under ``min_score`` dropped,
    matched as ``tune_grouping.score_photo`` does (no class map: ``confusion`` None)."""
    keep = scores >= min_score
    classes, s, ious = photo.classes[keep], scores[keep], photo.ious[keep]
    tp, right = tg.match_by_class(s, classes, ious, photo.gt_classes)
    c = len(photo.labelled)
    num_gt = np.bincount(photo.gt_classes - 1, minlength=c)[:c]
    return tg.PhotoScore(s, classes, tp, right, num_gt, photo.labelled, None)


def metrics(photos: list[tg.PhotoScore], sources) -> dict[str, float]:
    """AP^r@0.5 of each ``tune_grouping.AP_SOURCES`` column with photos here, their ``mean``,
    ``precision`` (percent) and ``false`` objects per photo (also per column: ``"coco
    precision"``), and ``right``: the right objects shown."""
    out = {}
    for column, names in tg.AP_SOURCES.items():
        members = [p for p, s in zip(photos, sources) if s in names]
        if members:
            out[column] = tg.ap_half(members)
            out[f"{column} precision"], out[f"{column} false"] = tg.shown_right(members)
    aps = [out[c] for c in tg.AP_SOURCES if c in out]
    out["mean"] = float(np.mean(aps)) if aps else np.nan
    out["precision"], out["false"] = tg.shown_right(photos)
    out["right"] = sum(int((p.right & p.labelled[p.classes - 1]).sum()) for p in photos)
    return out


def training_rows(photos: list[PhotoObjects]) -> tuple[np.ndarray, np.ndarray]:
    """``(X (M, F), y (M,))``: the features of every object of a class its photo's source
    labels, and whether it is right (``pfn evaluate``'s rule, matched by today's score)."""
    xs, ys = [], []
    for photo in photos:
        labelled = photo.labelled[photo.classes - 1]  # (N,)
        right = scored(photo, photo.features[:, 0]).right
        xs.append(photo.features[labelled])
        ys.append(right[labelled])
    return np.concatenate(xs).reshape(-1, len(QUALITY_FEATURES)), np.concatenate(ys)


def fit(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """``(weights (F,), bias)`` of a logistic regression of ``y`` on ``x``, on the raw
    features (fitted on standardised ones, L2 strength ``1 / c``, then folded back)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / std, y)
    weights = model.coef_[0] / std
    return weights, float(model.intercept_[0] - weights @ mean)


def logistic(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """``(N,)`` the quality scores of ``x`` ``(N, F)``: ``quality_score`` of each row, the
    function the Grouper scores with."""
    return np.array([quality_score(row, weights, bias) for row in x], dtype=np.float64)


def keep_threshold(scores: np.ndarray, right: np.ndarray, keep: float) -> float:
    """The largest threshold whose objects at or above it hold at least ``keep`` of the right
    ones (0 without right objects)."""
    ranked = np.sort(scores[right])[::-1]
    if len(ranked) == 0:
        return 0.0
    return float(ranked[math.ceil(keep * len(ranked)) - 1])


# ----------------------------------------------------------------------------- the folds
#: The four readings of each fold: (name, score, with a threshold).
READINGS = (("mean_prob", "mean_prob", False), ("mean_prob + min_score", "mean_prob", True),
            ("quality", "quality", False), ("quality + min_score", "quality", True))


def fold_model(photos: list[PhotoObjects], train: np.ndarray, keep: float, c: float) -> dict:
    """What fold's training photos ``train`` give: ``weights``, ``bias`` and the thresholds
    of each score (``min_score``: {score name: threshold})."""
    x, y = training_rows([photos[i] for i in train])
    weights, bias = fit(x, y, c)
    return {"weights": weights, "bias": bias, "objects": len(y), "right": int(y.sum()),
            "min_score": {"mean_prob": keep_threshold(x[:, 0], y, keep),
                          "quality": keep_threshold(logistic(x, weights, bias), y, keep)}}


def read(photo: PhotoObjects, model: dict, score: str, threshold: bool) -> tg.PhotoScore:
    """One photo under one reading of ``model`` (:data:`READINGS`)."""
    s = photo.features[:, 0] if score == "mean_prob" else \
        logistic(photo.features, model["weights"], model["bias"])
    return scored(photo, s, model["min_score"][score] if threshold else 0.0)


HEADER = ("| fold | score | min_score | " + " | ".join(f"{c} AP" for c in tg.AP_SOURCES)
          + " | mean AP | precision % | false / photo | right shown |")


def cells(m: dict) -> str:
    return " | ".join([tg._num(m.get(c, np.nan)) for c in tg.AP_SOURCES]
                      + [tg._num(m["mean"]), tg._num(m["precision"]), tg._num(m["false"], 2),
                         str(m["right"])])


def cross_validate(photos, sources, folds, keep: float, c: float):
    """``(table lines, {reading: [held metrics per fold]}, pooled {reading: [PhotoScore]})``."""
    sources = np.asarray(sources)
    lines = [HEADER, "|---:|---|---:|" + "---:|" * (len(tg.AP_SOURCES) + 4)]
    per_fold = {name: [] for name, _, _ in READINGS}
    pooled = {name: [None] * len(photos) for name, _, _ in READINGS}
    for f in range(int(folds.max()) + 1):
        model = fold_model(photos, np.flatnonzero(folds != f), keep, c)
        held = np.flatnonzero(folds == f)
        for name, score, threshold in READINGS:
            read_held = [read(photos[i], model, score, threshold) for i in held]
            for i, p in zip(held, read_held):
                pooled[name][i] = p
            m = metrics(read_held, sources[held])
            per_fold[name].append(m)
            t = tg._num(model["min_score"][score], 3) if threshold else "0"
            lines.append(f"| {f + 1} | {name} | {t} | {cells(m)} |")
    return lines, per_fold, pooled


def rule_lines(per_fold: dict) -> list[str]:
    """Per fold, each reading against today's (mean_prob, no threshold): precision and mean
    AP gained; a reading wins when precision is up and AP not down on every fold."""
    base = per_fold["mean_prob"]
    lines = ["| reading | " + " | ".join(f"fold {f + 1}" for f in range(len(base)))
             + " | wins on every fold? |", "|---|" + "---:|" * len(base) + "---|"]
    for name in list(per_fold)[1:]:
        gains = [(m["precision"] - b["precision"], m["mean"] - b["mean"])
                 for m, b in zip(per_fold[name], base)]
        wins = all(dp > 0 and da >= -1e-9 for dp, da in gains)
        lines.append(f"| {name} | " + " | ".join(f"{dp:+.1f} / {da:+.2f}" for dp, da in gains)
                     + f" | {'yes' if wins else 'no'} |")
    return lines


def auc(scores: np.ndarray, right: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating right from wrong objects (percent;
    50: no better than chance)."""
    from sklearn.metrics import roc_auc_score

    return 100 * float(roc_auc_score(right, scores)) if 0 < right.sum() < len(right) \
        else np.nan


def feature_lines(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Markdown: each feature's mean over the right and the wrong objects and its AUC alone."""
    lines = ["| feature | mean, right | mean, wrong | AUC alone % |", "|---|---:|---:|---:|"]
    for i, name in enumerate(QUALITY_FEATURES):
        lines.append(f"| {name} | {x[y, i].mean():.3f} | {x[~y, i].mean():.3f} | "
                     f"{tg._num(auc(x[:, i], y))} |")
    return lines


def pooled_lines(pooled: dict, sources) -> list[str]:
    """Markdown: every photo under its fold's readings: AP per column, precision and false
    objects per photo per column and in all, and the AUC of the held scores (right vs wrong,
    the objects of labelled classes, no threshold)."""
    head = " | ".join(f"{c} AP | {c} precision % | {c} false / photo" for c in tg.AP_SOURCES)
    lines = [f"| score | {head} | mean AP | all: precision % | all: false / photo | right "
             "shown | AUC % |", "|---|" + "---:|" * (3 * len(tg.AP_SOURCES) + 5)]
    for name, photos in pooled.items():
        m = metrics(photos, sources)
        labelled = [p.labelled[p.classes - 1] for p in photos]
        scores = np.concatenate([p.scores[k] for p, k in zip(photos, labelled)])
        right = np.concatenate([p.right[k] for p, k in zip(photos, labelled)])
        row = [tg._num(m.get(f"{c}{k}", np.nan), 2 if k == " false" else 1)
               for c in tg.AP_SOURCES for k in ("", " precision", " false")]
        row += [tg._num(m["mean"]), tg._num(m["precision"]), tg._num(m["false"], 2),
                str(m["right"]), "-" if "min_score" in name else tg._num(auc(scores, right))]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def config_text(weights: np.ndarray, bias: float, min_score: float, source: str,
                objects: int, photos: int) -> str:
    """The YAML of the fitted setting (``--save-config``)."""
    numbers = ", ".join(f"{w:.4g}" for w in [bias, *weights])
    return (f"# scripts/fit_quality.py on {source}: fitted on {objects} shown objects of "
            f"{photos} photos\n# (docs/experiments/quality-score.md). grouping.quality is the "
            f"bias, then one weight for each of\n# {', '.join(QUALITY_FEATURES)}.\n"
            f"grouping:\n  scoring: quality\n  quality: [{numbers}]\n"
            f"show:\n  min_score: {min_score:.4g}\n")


def run(args) -> int:
    _, cfg, _ = load_checkpoint(args.weights)
    predictor = Predictor(str(args.weights))
    grouping = quality_grouping(cfg.grouping)
    shared = find_shared_data()
    if shared is None:
        raise PFNError("the real data (../shared/data or $PFN_SHARED_DATA) was not found")
    cache = tg.read_cache(args.cache)
    save = None if args.cache is None else \
        (lambda: atomic_write(args.cache, lambda fh: pickle.dump(cache, fh)))
    sets = tg.pooled_sets(shared, tuple(predictor.class_names), args.limit)
    photos, sources = collect(predictor, grouping, sets, cache, tg.file_digest(args.weights),
                              save)
    folds = tg.stratified_folds(sources, args.folds, args.seed)
    lines, per_fold, pooled = cross_validate(photos, sources, folds, args.keep, args.C)
    print(f"{len(photos)} photos, {args.folds} folds (seed {args.seed}); min_score: the largest "
          f"threshold keeping {args.keep:.0%} of the right objects of the other folds\n")
    print("\n".join(tg.fold_sizes(sources, folds)) + "\n")
    print("Each fold's photos, read with the score fitted and the threshold chosen on the "
          "other folds:\n")
    print("\n".join(lines) + "\n")
    print("Against mean_prob with no threshold (today), held precision / mean AP gained:\n")
    print("\n".join(rule_lines(per_fold)) + "\n")
    print("Every photo held out once, pooled (each under its fold's score and threshold):\n")
    print("\n".join(pooled_lines(pooled, sources)) + "\n")
    x, y = training_rows(photos)
    print(f"Each feature on every photo ({len(y)} objects of labelled classes, {int(y.sum())} "
          "right):\n")
    print("\n".join(feature_lines(x, y)) + "\n")
    weights, bias = fit(x, y, args.C)
    min_score = keep_threshold(logistic(x, weights, bias), y, args.keep)
    print(f"Fitted on every photo: bias {bias:.4g}, "
          + ", ".join(f"{n} {w:.4g}" for n, w in zip(QUALITY_FEATURES, weights))
          + f"; its min_score {min_score:.4g}; mean_prob's min_score by the same rule "
          f"{keep_threshold(x[:, 0], y, args.keep):.4g}")
    if args.save_config is not None:
        text = config_text(weights, bias, min_score, args.weights.name, len(y), len(photos))
        print(f"wrote {atomic_write_text(args.save_config, text)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=Path("weights/pfn-lite0-voc.pt"))
    ap.add_argument("--folds", type=int, default=5, metavar="K")
    ap.add_argument("--seed", type=int, default=0, help="the seed of the fold split")
    ap.add_argument("--keep", type=float, default=0.95,
                    help="min_score keeps at least this share of the right objects (0-1)")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the fit")
    ap.add_argument("--limit", type=int, default=None, help="the first N photos of each source")
    ap.add_argument("--cache", type=Path, default=None,
                    help="a file keeping each photo's objects and IoUs (reused)")
    ap.add_argument("--save-config", type=Path, default=None, metavar="FILE",
                    help="write the fitted grouping.quality and show.min_score as YAML (a new "
                         "file)")
    args = ap.parse_args(argv)
    if not 0 < args.keep <= 1:
        print(f"fit_quality: --keep {args.keep}: in (0, 1]", file=sys.stderr)
        return 2
    if args.save_config is not None and args.save_config.exists():
        print(f"fit_quality: {args.save_config} exists; --save-config writes a new file",
              file=sys.stderr)
        return 2
    try:
        return run(args)
    except PFNError as exc:
        print(f"fit_quality: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
