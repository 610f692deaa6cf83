"""Image to instances on the CPU: PFN's PyTorch path, PFN's fast path, and Mask R-CNN, side by
side in one process.

The three run interleaved on the same photo (default: a 640 x 480 COCO image of the shared
data), ``--threads`` torch threads (ONNX Runtime takes the same number), after ``--warmup``
rounds, ``--repeat`` rounds timed:

* ``PFN torch``: ``load_model(runtime='torch')``, the networks in eager PyTorch (the old path);
* ``PFN onnx``: ``load_model(runtime='onnx')``, the backbone trunks on ONNX Runtime
  (docs/speed.md);
* ``PFN onnx no prior``: the fast path without the ImageNet step (``imagenet.enabled``
  false: no ImageNet classifier run, no fill; docs/model.md), when the model has it;
* ``Mask R-CNN``: torchvision's Mask R-CNN on the same EfficientNet-Lite0 backbone
  (benchmarks/maskrcnn_peer.py), ``--peer-weights`` if given, else untrained (its time then
  depends on how many boxes survive; the count is printed).

Printed per path: network and grouping seconds per image (median of the rounds, wall clock,
and CPU seconds of the process, which a busy machine disturbs less), the total, the ratio to
the peer and the speed-up over the torch path. Then a check that the fast path gives the torch
path's instances (same classes, mask IoU) on ``--check`` photos.

    python benchmarks/speed.py                       # 2 threads, 3 warm-up, 10 timed rounds
    python benchmarks/speed.py --threads 1 --repeat 5 --check 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pfn_napari.data import read_image
from pfn_napari.inference import load_model
from pfn_napari.predictor import Predictor

SHARED = Path(os.environ.get("PFN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared"
                             / "data"))
PHOTOS = SHARED / "coco128-train" / "coco" / "images"
DEFAULT_PHOTO = PHOTOS / "000000000009.jpg"  # 640 x 480


def timed(fn):
    """``(result, wall seconds, process CPU seconds)`` of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def pfn_step(predictor, image):
    """One image through a PFN path (a :class:`Predictor`): ``(instances, {network: (wall,
    cpu), grouping: ...})``."""
    _, nw, nc = timed(lambda: predictor.set_image(image))
    inst, gw, gc = timed(predictor.instances)
    return inst, {"network": (nw, nc), "grouping": (gw, gc)}


def same_instances(a, b) -> tuple[bool, float]:
    """Same classes in the same order, and the smallest mask IoU of the pairs."""
    if a.classes.tolist() != b.classes.tolist():
        return False, 0.0
    ious = [(m1 & m2).sum() / max(1, (m1 | m2).sum()) for m1, m2 in zip(a.masks, b.masks)]
    return True, float(min(ious, default=1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_PHOTO)
    ap.add_argument("--weights", default=None, help="PFN weights (default: the shipped model)")
    ap.add_argument("--peer-weights", type=Path, default=None,
                    help="a trained Mask R-CNN state dict (benchmarks/results.py's maskrcnn.pt)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--check", type=int, default=4, help="photos for the same-instances check")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-few", type=int, default=10,
                    help="detections kept by the second peer row (the first keeps up to 100)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    image = read_image(args.image)
    old = load_model(args.weights, "cpu", runtime="torch")
    new, w, _ = timed(lambda: load_model(args.weights, "cpu", runtime="onnx"))
    _, fw, _ = timed(new.network)  # export (or read the cache) and open the session
    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, {args.threads} threads; "
          f"fast path ready in {w + fw:.1f} s (export or cache read), runtime {new.runtime!r}")
    old, new = Predictor(old), Predictor(new)
    paths = {"PFN torch": lambda: pfn_step(old, image), "PFN onnx": lambda: pfn_step(new, image)}
    if new.imagenet.active:
        bare = Predictor(new.model, imagenet=replace(new.imagenet, enabled=False))
        paths["PFN onnx no prior"] = lambda: pfn_step(bare, image)
    peer_boxes = None
    if not args.no_peer:
        from maskrcnn_peer import build_maskrcnn, predict_maskrcnn

        peer = build_maskrcnn(old.num_classes).eval()
        if args.peer_weights:
            peer.load_state_dict(torch.load(args.peer_weights, map_location="cpu"))

        def peer_step(detections: int):
            def step():
                peer.roi_heads.detections_per_img = detections
                inst, pw, pc = timed(lambda: predict_maskrcnn(peer, image))
                return inst, {"network": (pw, pc), "grouping": (0.0, 0.0)}
            return step

        # torchvision's default keeps up to 100 detections (score > 0.05), each through the
        # mask head; "few" keeps --peer-few, about the objects of a photo: the least work a
        # useful detector does, so that the ratio does not flatter PFN
        paths["Mask R-CNN"] = peer_step(100)
        paths["Mask R-CNN few"] = peer_step(args.peer_few)
    rounds: dict[str, list[dict]] = {k: [] for k in paths}
    for r in range(args.warmup + args.repeat):
        for name, step in paths.items():  # interleaved: the load hits all paths alike
            inst, times = step()
            if r >= args.warmup:
                rounds[name].append(times)
            if name == "Mask R-CNN":
                peer_boxes = len(inst)

    def med(name: str, part: str, i: int) -> float:
        return statistics.median(t[part][i] for t in rounds[name])

    def total(name: str, i: int) -> float:
        return statistics.median(t["network"][i] + t["grouping"][i] for t in rounds[name])

    print(f"\n{'path':<18} {'network s':>10} {'grouping s':>11} {'total s':>8} {'cpu s':>7} "
          f"{'/ peer':>7} {'/ few':>6} {'vs torch':>9}")
    base = total("PFN torch", 0)
    peer_total = total("Mask R-CNN", 0) if "Mask R-CNN" in rounds else float("nan")
    few_total = total("Mask R-CNN few", 0) if "Mask R-CNN few" in rounds else float("nan")
    for name in rounds:
        tot = total(name, 0)
        print(f"{name:<18} {med(name, 'network', 0):>10.3f} {med(name, 'grouping', 0):>11.3f} "
              f"{tot:>8.3f} {total(name, 1):>7.3f} {tot / peer_total:>6.2f}x "
              f"{tot / few_total:>5.2f}x {base / tot:>8.2f}x")
    if peer_boxes is not None:
        print(f"(Mask R-CNN {'trained' if args.peer_weights else 'untrained'}: {peer_boxes} "
              f"instances on this photo at its defaults, {args.peer_few} in the 'few' row; "
              "wall-clock medians, 'cpu s' = process CPU seconds)")

    photos = [args.image] + sorted(p for p in PHOTOS.glob("*.jpg") if p != args.image)
    print(f"\nsame instances, onnx vs torch path, on {min(args.check, len(photos))} photos:")
    ok_all = True
    for p in photos[:args.check]:
        img = read_image(p)
        a, _ = pfn_step(old, img)
        b, _ = pfn_step(new, img)
        same, iou = same_instances(a, b)
        ok_all &= same and iou > 0.99
        print(f"  {p.name}: {len(a)} / {len(b)} instances, same classes {same}, "
              f"min mask IoU {iou:.4f}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
