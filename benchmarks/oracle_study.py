"""Oracle study: test-time grouping fed with ground-truth classes and locations.

Measures, on real images (the 77 COCO images in VOC layout, train + val), how much AP^r each
grouping method loses before any network is involved, why the faithful spectral clustering
falls short, and how each method degrades with noise on the locations. Prints Markdown tables
(the ones in docs/grouping.md).

    python benchmarks/oracle_study.py               # every table (about an hour, 2 busy cores)
    python benchmarks/oracle_study.py --parts ceiling noise   # some of them
    python benchmarks/oracle_study.py --limit 10    # quick look on 10 images

Parts: ``ceiling`` (methods and resolutions at noise 0), ``sigma`` (spectral's kernel width),
``diagnose`` (cell-level agreement, eigen-gaps, instances missing from the grid, the cluster
count), ``noise`` (AP^r against location noise for both methods).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.config import VOC_CLASSES, VOID, GroupingConfig  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.evaluate import evaluate  # noqa: E402
from pfn_napari.grouping import Grouper, oracle_network_output  # noqa: E402
from pfn_napari.grouping.spectral import dense_affinity, njw_eigenvectors  # noqa: E402
from pfn_napari.structures import Instances, Sample, grid_sample_indices  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("PFN_SHARED_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))
C = len(VOC_CLASSES)


def load_samples(root: Path, limit: int) -> list[Sample]:
    spec = f"voc:{root / 'coco128-train' / 'voc' / 'VOC2012'}"
    samples = list(open_dataset(spec, "train")) + list(open_dataset(spec, "val"))
    return samples[:limit] if limit else samples


def metrics_row(samples: list[Sample], preds: list[Instances]) -> tuple[float, float, float]:
    m = evaluate(samples, preds, VOC_CLASSES)
    return m.ap_r["0.5"], m.ap_r["0.7"], m.ap_r_vol


def run_grouping(samples: list[Sample], cfg: GroupingConfig, stride: int = 8,
                 full_classes: bool = True, noise: float = 0.0, counts: str = "gt"
                 ) -> tuple[tuple[float, float, float], float]:
    """AP^r@0.5, @0.7, AP^r_vol and mean seconds per image of ``cfg`` on the oracle."""
    preds, seconds = [], 0.0
    for i, s in enumerate(samples):
        cvec = grid_counts(s, stride) if counts == "grid" else \
            np.ones(C, np.float32) if counts == "ones" else "gt"
        net = oracle_network_output(s, C, noise=noise, rng=np.random.default_rng(1000 + i),
                                    stride=stride, full_classes=full_classes, counts=cvec)
        t0 = time.perf_counter()
        preds.append(Grouper(net).run(cfg).instances)
        seconds += time.perf_counter() - t0
    return metrics_row(samples, preds), seconds / len(samples)


def grid_ids(sample: Sample, stride: int) -> np.ndarray:
    """``(h, w)`` ground-truth instance id of each grid cell (void -> 0)."""
    rows = grid_sample_indices(sample.instance_map.shape[0], stride)
    cols = grid_sample_indices(sample.instance_map.shape[1], stride)
    ids = sample.instance_map[np.ix_(rows, cols)]
    return np.where(ids == VOID, 0, ids)


def grid_counts(sample: Sample, stride: int) -> np.ndarray:
    """``(C,)`` instances of each class with at least one grid cell."""
    ids = np.unique(grid_ids(sample, stride))
    ids = ids[ids > 0]
    return np.bincount(sample.instance_classes[ids - 1] - 1, minlength=C).astype(np.float32)


def perfect_assignment(sample: Sample, stride: int) -> Instances:
    """SPEC's "perfect assignment": the ground-truth instance map sampled on the grid, each
    full-resolution pixel taking its nearest cell's id (nearest-neighbour upsampling)."""
    big_h, big_w = sample.instance_map.shape
    ids = grid_ids(sample, stride)
    ry = np.minimum(np.floor(np.arange(big_h) / stride + 0.5).astype(int), ids.shape[0] - 1)
    rx = np.minimum(np.floor(np.arange(big_w) / stride + 0.5).astype(int), ids.shape[1] - 1)
    full = ids[np.ix_(ry, rx)]
    present = [k for k in np.unique(full) if k > 0]
    if not present:
        return Instances.empty(big_h, big_w)
    masks = np.stack([full == k for k in present])
    return Instances(masks, sample.instance_classes[np.array(present) - 1],
                     np.ones(len(present), np.float32))


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fmt(ap: tuple[float, float, float]) -> list[str]:
    return [f"{v:.1f}" for v in ap]


def part_ceiling(samples: list[Sample]) -> str:
    rows = []
    for stride in (8, 4):
        ap = metrics_row(samples, [perfect_assignment(s, stride) for s in samples])
        rows.append([f"perfect assignment, stride {stride}, nearest-neighbour upsampling",
                     *fmt(ap), "-"])
    spec = GroupingConfig()
    vote = GroupingConfig(method="vote")
    configs = [
        ("vote, stride 8, classes from the grid (bilinear one-hot)", vote, 8, False),
        ("vote, stride 8, assign='cell'", replace(vote, assign="cell"), 8, True),
        ("**vote, stride 8** (assign='location', the default)", vote, 8, True),
        ("vote, stride 4", vote, 4, True),
        ("vote, stride 1", vote, 1, True),
        ("spectral sigma 0.5, classes from the grid", spec, 8, False),
        ("**spectral sigma 0.5** (the paper's, assign='cell')", spec, 8, True),
        ("spectral sigma 0.5, assign='location'", replace(spec, assign="location"), 8, True),
        ("spectral sigma 0.05", replace(spec, sigma=0.05), 8, True),
        ("knn-spectral sigma 0.5", replace(spec, method="knn-spectral"), 8, True),
        ("kmeans on [t, q]", replace(spec, method="kmeans"), 8, True),
    ]
    for name, cfg, stride, full in configs:
        ap, sec = run_grouping(samples, cfg, stride, full)
        rows.append([name, *fmt(ap), f"{sec:.3f}"])
        print(f"  {name}: {ap[0]:.1f} ({sec:.3f} s)", file=sys.stderr, flush=True)
    ap, sec = run_grouping(samples, vote, 8, True, counts="ones")
    rows.append(["one instance per class (no grouping)", *fmt(ap), f"{sec:.3f}"])
    return table(["grouping (ground-truth full-resolution classes unless said)", "AP^r@0.5",
                  "AP^r@0.7", "AP^r_vol", "s / image"], rows)


def part_sigma(samples: list[Sample]) -> str:
    rows = []
    for sigma, coords in ((0.5, True), (0.1, True), (0.05, True), (0.5, False)):
        cfg = GroupingConfig(sigma=sigma, use_coords=coords)
        ap, sec = run_grouping(samples, cfg)
        rows.append([f"{sigma}", "yes" if coords else "no", *fmt(ap), f"{sec:.3f}"])
        print(f"  sigma {sigma} coords {coords}: {ap[0]:.1f}", file=sys.stderr, flush=True)
    return table(["sigma", "coordinates", "AP^r@0.5", "AP^r@0.7", "AP^r_vol", "s / image"], rows)


def part_diagnose(samples: list[Sample]) -> str:
    """Cell-level agreement with the ground truth and the spectrum, per class with >= 2
    instances; instances invisible on the grid; spectral with the grid-visible count."""
    lines = []
    small = {"instances": 0, "no cell": 0, "1-3 cells": 0}
    for s in samples:
        ids = grid_ids(s, 8)
        cells = np.bincount(ids.ravel(), minlength=s.num_instances + 1)[1:]
        visible = np.isin(np.arange(1, s.num_instances + 1),
                          np.unique(s.instance_map[s.instance_map != VOID]))
        small["instances"] += int(visible.sum())
        small["no cell"] += int(((cells == 0) & visible).sum())
        small["1-3 cells"] += int(((cells >= 1) & (cells <= 3)).sum())
    lines.append(f"Visible ground-truth instances: {small['instances']}; with no stride-8 cell: "
                 f"{small['no cell']}; with 1-3 cells: {small['1-3 cells']}.")
    rows = []
    for sigma in (0.5, 0.05):
        ari, gaps, merged, classes = [], [], 0, 0
        for s in samples:
            ids = grid_ids(s, 8)
            net = oracle_network_output(s, C, stride=8, full_classes=True)
            grouper = Grouper(net)
            cfg = GroupingConfig(sigma=sigma)
            res = grouper.run(cfg)
            for cls in np.unique(res.refined_class_map):
                if cls == 0 or cls == VOID:
                    continue
                cell = res.refined_class_map == cls
                truth = ids[cell]
                if len(np.unique(truth)) < 2:
                    continue
                classes += 1
                ari.append(adjusted_rand(truth, res.grid_labels[cell]))
                data = grouper.class_data(int(cls), cell)
                k = len(np.unique(truth))
                w = dense_affinity(data.t, data.q, sigma)
                vals = njw_eigenvectors(w, k + 1)[0]
                gaps.append(vals[k - 1] - vals[k])
                merged += int(len(np.unique(res.grid_labels[cell])) < k)
        rows.append([f"{sigma}", f"{classes}", f"{np.mean(ari):.3f}", f"{np.median(gaps):.4f}"])
        print(f"  diagnose sigma {sigma}: ARI {np.mean(ari):.3f}", file=sys.stderr, flush=True)
    lines.append("")
    lines.append(table(["sigma", "classes with >= 2 instances on the grid",
                        "mean adjusted Rand index of the cells", "median eigen-gap "
                        "lambda_k - lambda_(k+1)"], rows))
    lines.append("")
    rows = []
    for name, cfg, noise in (("spectral sigma 0.5", GroupingConfig(), 0.0),
                             ("vote", GroupingConfig(method="vote"), 0.02)):
        for counts in ("gt", "grid"):
            ap, _ = run_grouping(samples, cfg, noise=noise, counts=counts)
            rows.append([name, f"{noise}", "visible in the image" if counts == "gt"
                         else "visible on the grid", *fmt(ap)])
    lines.append(table(["method", "noise", "k = instances", "AP^r@0.5", "AP^r@0.7", "AP^r_vol"],
                       rows))
    return "\n".join(lines)


def part_noise(samples: list[Sample]) -> str:
    rows = []
    methods = (("vote", GroupingConfig(method="vote")),
               ("vote, assign='cell'", GroupingConfig(method="vote", assign="cell")),
               ("spectral sigma 0.5", GroupingConfig()))
    for noise in (0.0, 0.01, 0.02, 0.05, 0.1):
        row = [f"{noise}"]
        for name, cfg in methods:
            ap, _ = run_grouping(samples, cfg, noise=noise)
            row += [f"{ap[0]:.1f}", f"{ap[2]:.1f}"]
            print(f"  noise {noise} {name}: {ap[0]:.1f}", file=sys.stderr, flush=True)
        rows.append(row)
    header = ["noise std"]
    for name, _ in methods:
        header += [f"{name} AP^r@0.5", f"{name} AP^r_vol"]
    return table(header, rows)


PARTS = {"ceiling": part_ceiling, "sigma": part_sigma, "diagnose": part_diagnose,
         "noise": part_noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the shared data folder")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on a shared 2-core machine OpenBLAS's second thread makes eigh ~8x slower
    threadpool_limits(1)
    samples = load_samples(args.data, args.limit)
    print(f"{len(samples)} images, {sum(s.num_instances for s in samples)} instances\n")
    for part in args.parts:
        start = time.perf_counter()
        print(f"### {part}\n")
        print(PARTS[part](samples))
        print(f"\n({part}: {time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
