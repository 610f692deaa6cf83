"""Speed, memory and AP of the grouping methods.

Part 1 (speed): one class mask of about 500 / 3,000 / 20,000 / 50,000 cells, four touching
instances (the quadrants of a square), ground-truth box6 locations plus Gaussian noise (std
0.02); each method clusters it into k = 4 from scratch (no cache). Reported: median wall time
of ``--repeat`` runs, peak traced memory (``tracemalloc``: numpy buffers, including LAPACK's
work arrays), the speed-up over the faithful spectral clustering, and the adjusted Rand index
of the cells against the truth. scikit-learn's ``SpectralClustering(affinity='precomputed')``
runs on the same dense affinity (its build time included). Dense methods are skipped where the
``N x N`` matrix would not fit the memory budget or eigh would take hours.

Part 2 (AP): AP^r@0.5 of each method on the real-data oracle (77 COCO images in VOC layout,
ground-truth full-resolution classes and box6 locations, noise 0 and 0.02).

    python benchmarks/grouping.py                 # both parts (~10 min on 2 busy cores)
    python benchmarks/grouping.py --no-ap         # speed only
    python benchmarks/grouping.py --sizes 500 3000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.config import VOC_CLASSES, GroupingConfig  # noqa: E402
from pfn_napari.grouping import (GROUPING_METHODS, ClassData, Clustering, Grouper,  # noqa: E402
                                 register_grouping_method)
from pfn_napari.grouping import oracle_network_output  # noqa: E402
from pfn_napari.grouping.spectral import dense_affinity  # noqa: E402
from pfn_napari.structures import Sample  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("PFN_SHARED_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))
#: Dense methods run up to this many cells (W alone: N^2 x 4 bytes = 576 MB at 12,000; eigh's
#: O(N^3) time, extrapolated from 3,000 cells, is over a quarter of an hour at 20,000).
DENSE_LIMIT = 12_000


def sklearn_spectral(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    """scikit-learn's SpectralClustering on the paper's dense affinity (selection by k-means
    inertia, its own embedding), for comparison."""
    from sklearn.cluster import SpectralClustering

    q = data.q if cfg.use_coords else None
    w = dense_affinity(data.t, q, cfg.sigma).astype(np.float64)
    model = SpectralClustering(n_clusters=k, affinity="precomputed", n_init=cfg.n_init,
                               random_state=cfg.seed, assign_labels="kmeans")
    labels = model.fit_predict(w).astype(np.int64)
    return Clustering(labels, np.ones(int(labels.max()) + 1))


METHODS = {
    "spectral (faithful)": ("spectral", GroupingConfig()),
    "sklearn SpectralClustering": ("sklearn-spectral", GroupingConfig()),
    "knn-spectral": ("knn-spectral", GroupingConfig(method="knn-spectral")),
    "vote": ("vote", GroupingConfig(method="vote")),
    "kmeans [t, q]": ("kmeans", GroupingConfig(method="kmeans")),
}
DENSE = {"spectral", "sklearn-spectral"}


def quadrant_mask(cells: int, noise: float = 0.02) -> tuple[ClassData, np.ndarray]:
    """One class of ~``cells`` pixels at stride 1: four touching quadrant instances."""
    side = int(round(np.sqrt(cells)))
    inst = np.zeros((side, side), np.int32)
    half = side // 2
    inst[:half, :half], inst[:half, half:], inst[half:, :half], inst[half:, half:] = 1, 2, 3, 4
    sample = Sample(np.zeros((side, side, 3), np.uint8), np.ones((side, side), np.uint8), inst,
                    np.ones(4, np.int64), "quadrants")
    net = oracle_network_output(sample, 1, noise=noise, rng=0, stride=1)
    data = Grouper(net).class_data(1, np.ones((side, side), bool))
    return data, inst.ravel()


def fresh(data: ClassData) -> ClassData:
    return replace(data, cache={})


def time_method(name: str, data: ClassData, cfg: GroupingConfig, repeat: int
                ) -> tuple[float, float, np.ndarray]:
    fn = GROUPING_METHODS[name]
    times = []
    labels = None
    for _ in range(repeat):
        d = fresh(data)
        start = time.perf_counter()
        labels = fn(d, 4, cfg).labels
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn(fresh(data), 4, cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2 ** 20, labels


def speed_table(sizes: list[int], repeat: int) -> str:
    from sklearn.metrics import adjusted_rand_score

    rows = []
    dense_seen: dict[str, tuple[int, float]] = {}  # label -> (cells, seconds) of the largest run
    for size in sizes:
        data, truth = quadrant_mask(size)
        n = len(data)
        results = {}
        for label, (name, cfg) in METHODS.items():
            if name in DENSE and n > DENSE_LIMIT:
                results[label] = None
                continue
            reps = 1 if (name in DENSE and n > 1000) else repeat
            sec, mem, labels = time_method(name, data, cfg, reps)
            results[label] = (sec, mem, adjusted_rand_score(truth, labels))
            if name in DENSE:
                dense_seen[label] = (n, sec)
            print(f"  {n} cells, {label}: {sec:.4f} s, {mem:.1f} MiB", file=sys.stderr, flush=True)
        base = results["spectral (faithful)"]
        for label, res in results.items():
            if res is None:
                gb = n * n * 4 / 2 ** 30
                reason = f"skipped: N x N = {gb:.1f} GiB float32"
                if label in dense_seen:  # eigh is O(N^3)
                    n0, t0 = dense_seen[label]
                    reason += f", about {t0 * (n / n0) ** 3 / 60:.0f} min by N^3 from {n0:,}"
                rows.append([f"{n:,}", label, reason, "-", "-", "-"])
                continue
            sec, mem, ari = res
            speedup = base[0] / sec if base is not None else None
            ratio = "-" if speedup is None else \
                f"{speedup:.2f}x" if speedup < 1 else f"{speedup:.0f}x"
            rows.append([f"{n:,}", label, f"{sec:.4f}", f"{mem:.1f}", ratio, f"{ari:.3f}"])
    header = ["cells", "method", "seconds", "peak MiB", "speed-up vs faithful",
              "ARI vs truth"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def ap_table(data_root: Path, limit: int) -> str:
    from pfn_napari.data import open_dataset
    from pfn_napari.evaluate import evaluate

    spec = f"voc:{data_root / 'coco128-train' / 'voc' / 'VOC2012'}"
    samples = list(open_dataset(spec, "train")) + list(open_dataset(spec, "val"))
    samples = samples[:limit] if limit else samples
    rows = []
    for label, (name, cfg) in METHODS.items():
        cfg = replace(cfg, method=name)
        row = [label]
        for noise in (0.0, 0.02):
            preds, seconds = [], 0.0
            for i, s in enumerate(samples):
                net = oracle_network_output(s, 20, noise=noise, rng=np.random.default_rng(1000 + i),
                                            full_classes=True)
                start = time.perf_counter()
                preds.append(Grouper(net).run(cfg).instances)
                seconds += time.perf_counter() - start
            m = evaluate(samples, preds, VOC_CLASSES)
            row += [f"{m.ap_r['0.5']:.1f}", f"{m.ap_r_vol:.1f}"]
            if noise == 0.0:
                row.append(f"{seconds / len(samples):.3f}")
            print(f"  AP {label} noise {noise}: {m.ap_r['0.5']:.1f}", file=sys.stderr, flush=True)
        rows.append(row)
    header = ["method", "AP^r@0.5 (noise 0)", "AP^r_vol (noise 0)", "s / image (noise 0)",
              "AP^r@0.5 (noise 0.02)", "AP^r_vol (noise 0.02)"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    return f"{len(samples)} images\n\n{body}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 3000, 20000, 50000])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of the fast methods")
    parser.add_argument("--no-ap", action="store_true", help="skip the real-data AP table")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="first N images for the AP table")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on a shared 2-core machine OpenBLAS's second thread makes eigh ~8x slower
    threadpool_limits(1)
    register_grouping_method("sklearn-spectral", sklearn_spectral)  # this comparison only
    print("### speed and memory (one class mask, k = 4, from scratch)\n")
    print(speed_table(args.sizes, args.repeat))
    if not args.no_ap:
        print("\n### AP^r on the real-data oracle (ground-truth classes and locations)\n")
        print(ap_table(args.data, args.limit))


if __name__ == "__main__":
    main()
