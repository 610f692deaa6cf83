"""How long the napari widget's re-clustering takes, against a full network + grouping run.

On the 500 x 375 sample image (``pfn_napari/sample_data/skaters.jpg``) it times, in one process:

* **full**: the networks (:func:`pfn_napari.inference.run_network`) plus a first grouping with a
  fresh :class:`~pfn_napari.grouping.Grouper` (what *Run PFN* costs, without loading weights);
* for every grouping method, what the widget runs when a knob changes, through the widget's
  own :class:`~pfn_napari.napari.PFNSession` (the Grouper, then the masks brought back
  to the image): the first grouping with that method, a changed **count** of the largest
  class (only k-means re-runs), a changed **sigma** (affinity and embedding re-run), a changed
  **tau** and a changed **size threshold**;
* **layers**: building the data of the re-clustered layers (instance ids, clusters, vectors).

Every repetition asks for a value not asked before, so the Grouper's caches cannot answer
from an earlier repetition. Times are medians in seconds; ``ratio`` is full / re-cluster.

    python benchmarks/recluster.py                       # the shipped weights
    python benchmarks/recluster.py --weights runs/x/final.pt --repeats 5 --threads 2

Without weights it falls back to an untrained EfficientNet-Lite0 PFN (timings only: its class
map is noise). ``--oracle VOC_ROOT`` replaces the networks' *output* (not their timing) by the
image's ground truth (:func:`pfn_napari.grouping.oracle_network_output`, locations with noise
``--noise``), so the grouping runs on the real instances of the image: realistic cluster sizes
before trained weights exist. The skaters image is ``000000000077`` of
``shared/data/coco128-train/voc/VOC2012``. A script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TARGET_S = 0.2  # what the widget aims for, per re-clustering


def _untrained_model(tmp: Path) -> str:
    import torch

    from pfn_napari.checkpoint import save_weights
    from pfn_napari.config import ModelConfig, PFNConfig
    from pfn_napari.model import build_system

    torch.manual_seed(0)
    cfg = PFNConfig(model=ModelConfig(backbone="efficientnet_lite0"))
    return str(save_weights(tmp / "untrained-lite0.pt", build_system(cfg.model, "unified"), cfg))


def _median(fn, values) -> float:
    times = []
    for v in values:
        t0 = time.perf_counter()
        fn(v)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch

    from pfn_napari.errors import PFNError
    from pfn_napari.grouping import GROUPING_METHODS, Grouper
    from pfn_napari.inference import default_weights_path, run_network
    from pfn_napari.napari import PFNSession, TuneParams
    from pfn_napari.napari import layers as L
    from pfn_napari.demo import SAMPLE_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--image", default=str(SAMPLE_DIR / "skaters.jpg"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--methods", default=",".join(GROUPING_METHODS),
                   help="comma-separated grouping methods")
    p.add_argument("--oracle", default=None, metavar="VOC_ROOT",
                   help="group the ground truth of --oracle-id from this VOC-layout root instead "
                        "of the network's output (the networks still run, for the full time)")
    p.add_argument("--oracle-id", default="000000000077")
    p.add_argument("--noise", type=float, default=0.02, help="oracle location noise")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    image = np.asarray(Image.open(args.image).convert("RGB"))
    tmp = tempfile.TemporaryDirectory()
    weights = args.weights
    note = ""
    if weights is None and not default_weights_path().is_file():
        weights = _untrained_model(Path(tmp.name))
        note = " (UNTRAINED: no shipped weights yet; clusters are not meaningful)"
    s = PFNSession()
    try:
        s.load_model(weights, args.device)
    except PFNError as exc:
        print(f"recluster: error: {exc}", file=sys.stderr)
        return 2
    base = s.default_params()

    oracle = None
    if args.oracle:
        from pfn_napari.data import open_dataset
        from pfn_napari.grouping import oracle_network_output

        ds = open_dataset(f"voc:{args.oracle}", "trainval", s.class_names)
        sample = next(ds[i] for i in range(len(ds)) if str(ds[i].image_id) == args.oracle_id)
        image = sample.image
        oracle = oracle_network_output(sample, len(s.class_names), s.model.encoding,
                                       noise=args.noise, rng=0)
        note = note.replace("clusters are not meaningful", "network timed only")
        note += f" (ORACLE: grouping the ground truth of {args.oracle_id}, noise {args.noise})"
        print(f"oracle: {sample.num_instances} instances, classes "
              f"{sorted(set(s.class_names[c - 1] for c in sample.instance_classes))}")

    timed: dict[str, float] = {}

    def run_net() -> None:
        s.run_network(image)
        timed["network"] = s.network_seconds
        if oracle is not None:  # keep the timing of the networks, group the ground truth
            s.use_network_output(oracle)

    name = Path(args.image).name if oracle is None else args.oracle_id
    print(f"image {name} {image.shape[1]}x{image.shape[0]}, weights {s.model.path}{note}, device {s.model.device}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    run_net()  # warm-up (first forward allocates)
    fulls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        net = run_network(s.model, image)
        cfg = base.grouping_config(s.model.config.grouping)
        Grouper(oracle if oracle is not None else net).run(cfg)
        fulls.append(time.perf_counter() - t0)
    full = statistics.median(fulls)
    t_net = timed["network"]

    rows = []
    r = args.repeats
    for method in args.methods.split(","):
        run_net()  # a fresh Grouper, as after Run
        params = TuneParams(method, base.sigma, base.tau, base.min_size_frac)
        t0 = time.perf_counter()
        first = s.recluster(params)
        t_first = time.perf_counter() - t0
        refined = first.refined_class_map
        classes, cells = np.unique(refined[refined > 0], return_counts=True)
        cls = int(classes[cells.argmax()]) if len(classes) else 1
        k0 = max(1, int(round(float(s.net.counts[cls - 1]))))
        t_count = _median(lambda k: s.recluster(TuneParams(method, base.sigma, base.tau,
                                                           base.min_size_frac, ((cls, k),))),
                          [k0 + 1 + i for i in range(r)])
        t_sigma = _median(lambda sg: s.recluster(TuneParams(method, sg, base.tau, base.min_size_frac)),
                          [base.sigma * (0.5 - 0.1 * i) for i in range(r)])
        t_tau = _median(lambda tau: s.recluster(TuneParams(method, base.sigma, tau, base.min_size_frac)),
                        [base.tau + 0.05 * (i + 1) for i in range(r)])
        t_size = _median(lambda f: s.recluster(TuneParams(method, base.sigma, base.tau, f)),
                         [base.min_size_frac * (2 + i) for i in range(r)])

        def build_layers(_):
            c = s.clustering
            L.instances_layer(c.instances, s.class_names)
            L.clusters_layer(c.grid_labels, s.geom)
            L.vectors_layer(s.centers, c.refined_class_map > 0, c.grid_labels, s.geom)

        t_layers = _median(build_layers, range(r))
        rows.append((method, t_first, t_count, t_sigma, t_tau, t_size, t_layers,
                     len(s.clustering.instances), int(cells.max()) if len(cells) else 0))

    print(f"\nfull run (networks {t_net:.3f} s + first grouping): {full:.3f} s\n")
    head = ("method", "first", "count", "sigma", "tau", "size", "layers", "ratio (count)",
            "ratio (sigma)", "N inst", "cells of largest class")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m, t1, tc, ts, tt, tz, tl, n, cells in rows:
        print(f"| {m} | {t1:.3f} | {tc:.3f} | {ts:.3f} | {tt:.3f} | {tz:.3f} | {tl:.3f} | "
              f"{full / max(tc + tl, 1e-9):.1f}x | {full / max(ts + tl, 1e-9):.1f}x | {n} | {cells} |")
    ok = [m for m, _, tc, ts, *_rest in rows if max(tc, ts) < TARGET_S]
    print(f"\nunder {TARGET_S} s for count and sigma changes: {', '.join(ok) or 'none'}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
