"""How long a re-clustering takes (a knob changed in the napari widget or the notebook), every
grouping method, against a full *Run PFN* in the same process.

On a 640 x 480 photo (default: the skaters sample, ``pfn_napari/sample_data/skaters.jpg``,
resized from 500 x 375) with the weights' own grouping (sigma, tau, count source, the ImageNet
prior with its crop check and GrabCut outlines: everything but the knob changed), it times,
through the widget's own :class:`~pfn_napari.napari.PFNSession`:

* **baseline**: *Run PFN* without loading the weights: the networks and the first grouping
  with a fresh :class:`~pfn_napari.grouping.Grouper` (GrabCut, the crop classifier);
* for every grouping method, on a session that has just run PFN with the weights' method: a
  **switch** to the method (from the weights' method; to the weights' method from ``kmeans``),
  then a changed **count** of the largest class (only k-means re-runs), **sigma**, **tau** and
  **size threshold**. Every repetition asks for a value not asked before, so the Grouper's
  caches cannot answer from an earlier one.

Times are medians in seconds of wall time, and of this process's CPU time (``cpu``: what a
machine shared with other jobs inflates least). ``worst`` is the slowest change of the row,
``ratio`` the baseline over it. The one-time imports of the first clustering in a process
(:func:`pfn_napari.grouping.methods.warm_up`, which an interactive Grouper starts in the
background) are timed first and reported apart.

    python benchmarks/recluster.py                      # the shipped weights, 640 x 480
    python benchmarks/recluster.py --image photo.jpg --size native --repeats 5

Without weights it falls back to an untrained EfficientNet-Lite0 PFN (timings only: its class
map is noise). ``--oracle VOC_ROOT`` replaces the networks' *output* (not their timing) by the
image's ground truth (:func:`pfn_napari.grouping.oracle_network_output`, locations with noise
``--noise``); the skaters photo is ``000000000077`` of ``shared/data/coco128-train/voc/VOC2012``.
A script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

TARGET_S = 0.2  # what the widget aims for, per re-clustering
CHANGES = ("switch", "count", "sigma", "tau", "size")


def _untrained_model(tmp: Path) -> str:
    import torch

    from pfn_napari.checkpoint import save_weights
    from pfn_napari.config import ModelConfig, PFNConfig
    from pfn_napari.model import build_system

    torch.manual_seed(0)
    cfg = PFNConfig(model=ModelConfig(backbone="efficientnet_lite0"))
    return str(save_weights(tmp / "untrained-lite0.pt", build_system(cfg.model, "unified"), cfg))


def _timed(fn: Callable[[Any], Any], values: Iterable[Any]) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn(v)`` over ``values``."""
    wall, cpu = [], []
    for v in values:
        w0, c0 = time.perf_counter(), time.process_time()
        fn(v)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _image(path: str, size: str) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if size != "native":
        w, h = (int(v) for v in size.lower().split("x"))
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def _method_row(s: Any, run_net: Callable[[], None], method: str, r: int) -> dict[str, Any]:
    """Time the changes of one method on a session that has just run PFN (the weights'
    grouping first, untimed, as *Run PFN* does)."""
    from dataclasses import replace

    run_net()
    base = s.default_params()
    params = replace(base, method=method)
    s.recluster(base if method != base.method else replace(base, method="kmeans"))
    out: dict[str, Any] = {"switch": _timed(lambda p: s.recluster(p), [params])}
    refined = s.clustering.refined_class_map
    classes, cells = np.unique(refined[refined > 0], return_counts=True)
    cls = int(classes[cells.argmax()]) if len(classes) else 1
    k0 = int(s.clustering.cluster_counts.get(cls, 1))
    out["count"] = _timed(lambda k: s.recluster(replace(params, count_override=((cls, k),))),
                          [k0 + 1 + i for i in range(r)])
    out["sigma"] = _timed(lambda v: s.recluster(replace(params, sigma=v)),
                          [base.sigma * (0.8 - 0.2 * i) for i in range(r)])
    out["tau"] = _timed(lambda v: s.recluster(replace(params, tau=v)),
                        [base.tau + 0.05 * (i + 1) for i in range(r)])
    out["size"] = _timed(lambda v: s.recluster(replace(params, min_size_frac=v)),
                         [base.min_size_frac * (2 + i) for i in range(r)])
    out["instances"] = len(s.recluster(params).instances)
    out["cells"] = int(cells.max()) if len(cells) else 0
    return out


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch

    from pfn_napari.demo import SAMPLE_DIR
    from pfn_napari.errors import PFNError
    from pfn_napari.grouping import GROUPING_METHODS
    from pfn_napari.grouping.methods import warm_up
    from pfn_napari.inference import default_weights_path
    from pfn_napari.napari import PFNSession

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--image", default=str(SAMPLE_DIR / "skaters.jpg"))
    p.add_argument("--size", default="640x480", help="WxH to resize the photo to, or 'native'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--methods", default=",".join(GROUPING_METHODS),
                   help="comma-separated grouping methods")
    p.add_argument("--oracle", default=None, metavar="VOC_ROOT",
                   help="group the ground truth of --oracle-id from this VOC-layout root instead "
                        "of the network's output (the networks still run, for the baseline)")
    p.add_argument("--oracle-id", default="000000000077")
    p.add_argument("--noise", type=float, default=0.02, help="oracle location noise")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    image = _image(args.image, args.size)
    tmp = tempfile.TemporaryDirectory()
    weights, note = args.weights, ""
    if weights is None and not default_weights_path().is_file():
        weights = _untrained_model(Path(tmp.name))
        note = " (UNTRAINED: no shipped weights yet; clusters are not meaningful)"
    s = PFNSession()
    try:
        s.load_model(weights, args.device)
    except PFNError as exc:
        print(f"recluster: error: {exc}", file=sys.stderr)
        return 2

    oracle = None
    if args.oracle:
        from pfn_napari.data import open_dataset
        from pfn_napari.grouping import oracle_network_output

        ds = open_dataset(f"voc:{args.oracle}", "trainval", s.class_names)
        sample = next(ds[i] for i in range(len(ds)) if str(ds[i].image_id) == args.oracle_id)
        image = sample.image
        oracle = oracle_network_output(sample, len(s.class_names), s.model.encoding,
                                       noise=args.noise, rng=0)
        note += f" (ORACLE: grouping the ground truth of {args.oracle_id}, noise {args.noise})"

    def run_net() -> None:
        s.run_network(image)
        if oracle is not None:  # keep the networks' timing, group the ground truth
            s.use_network_output(oracle)

    t0 = time.perf_counter()
    warm_up()
    t_warm = time.perf_counter() - t0
    run_net()  # the first forward allocates
    g, step = s.model.config.grouping, s.model.config.imagenet
    name = Path(args.image).name if oracle is None else args.oracle_id
    print(f"image {name} {image.shape[1]}x{image.shape[0]}, weights {s.model.path}{note}, "
          f"device {s.model.device}, {args.threads} torch thread(s), median of {args.repeats}")
    print(f"the weights' grouping: method {g.method}, sigma {g.sigma}, tau {g.tau}, "
          f"count_source {g.count_source}; ImageNet step: weight {step.weight}, check "
          f"{step.check.enabled}, shape {step.shape}")
    print(f"one-time imports of the first clustering in a process (warm_up): {t_warm:.3f} s")

    def run_once(_: Any) -> None:
        run_net()
        s.recluster(s.default_params())

    full, full_cpu = _timed(run_once, range(args.repeats))
    print(f"\nbaseline: Run PFN (networks + first grouping): {full:.3f} s wall, "
          f"{full_cpu:.3f} s CPU\n")
    head = ("method",) + CHANGES + ("worst", "cpu worst", "ratio", "instances",
                                    "cells of largest class")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ok = []
    for method in args.methods.split(","):
        row = _method_row(s, run_net, method, args.repeats)
        worst = max(row[c][0] for c in CHANGES)
        worst_cpu = max(row[c][1] for c in CHANGES)
        if worst <= TARGET_S:
            ok.append(method)
        cells = " | ".join(f"{row[c][0]:.3f}" for c in CHANGES)
        print(f"| {method} | {cells} | {worst:.3f} | {worst_cpu:.3f} | "
              f"{full / max(worst, 1e-9):.1f}x | {row['instances']} | {row['cells']} |")
    print(f"\nevery change within {TARGET_S} s (wall): {', '.join(ok) or 'none'}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
