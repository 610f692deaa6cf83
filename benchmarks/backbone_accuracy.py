"""Does a bigger EfficientNet-Lite buy accuracy? Stage 1 (the category network) of the shipped
recipe trained with each backbone for the same number of steps, then the mean IoU of its class
map on every real val split and the network time of a 640x480 photo.

    python benchmarks/backbone_accuracy.py --steps 900 --threads 2 --out runs/backbone-accuracy
    python benchmarks/backbone_accuracy.py --backbones efficientnet_lite0 efficientnet_lite2

The recipe is ``cpu-demo`` (the shipped weights' config, ``scripts/train_default_weights.py``'s
data: the train splits of ../shared/data plus synthetic shapes) with only ``model.backbone``
changed; each backbone keeps its stem and first two stages frozen, as the shipped Lite0 does,
and the learning rate drops x0.1 after 70 % of the steps. Both runs see the same crops in the
same order (seed 0), one after the other in this process, so their times share the machine's
conditions. A finished run in ``--out/<backbone>`` is reused (delete it to train again).

Prints one row per backbone: steps, training minutes and steps/s, mIoU of the category map on
the COCO photos, Penn-Fudan and the horses (val splits), the person and horse IoU, network
seconds per 640x480 photo and the ratios against the first backbone. Stage 1 alone answers the
question the COCO mIoU asks (which classes the category network recognises); the instance
network and the counts are trained on top of it and are compared by the full recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.config import BACKBONES, load_config  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.demo import demo_train_spec, find_shared_data, open_set, real_specs  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.evaluate import Evaluator  # noqa: E402
from pfn_napari.model import build_backbone  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402
from pfn_napari.producers import class_lut  # noqa: E402
from pfn_napari.structures import Instances  # noqa: E402
from pfn_napari.train import train  # noqa: E402


def frozen_prefixes(backbone: str) -> list[str]:
    """The stem and the blocks of the first two stages of a Lite backbone (the shipped
    recipe's ``train.frozen`` for Lite0, at the same depth for the deeper variants)."""
    last = build_backbone(backbone).stage_ends[1]
    return ["backbone._conv_stem", "backbone._bn0",
            *[f"backbone._blocks.{i}." for i in range(last + 1)]]


def train_category(backbone: str, steps: int, out: Path, spec: str) -> tuple[Path, float]:
    """Stage 1 with ``backbone``; returns the checkpoint and the training minutes (read from
    the run's log when the run is reused)."""
    final = out / "final.pt"
    timing = out / "minutes.json"
    if final.is_file() and timing.is_file():
        print(f"{backbone}: reusing {final}")
        return final, json.loads(timing.read_text())["minutes"]
    cfg = load_config("cpu-demo")
    per_epoch = len(open_dataset(spec, "train", cfg.data.classes)) // cfg.train.batch_size
    frozen = "[" + ",".join(frozen_prefixes(backbone)) + "]"
    settings = ["train.stage=category", f"data.train={spec}", f"train.out_dir={out}",
                f"model.backbone={backbone}", f"train.frozen={frozen}",
                f"train.max_steps={steps}", "train.checkpoint_every=0",
                f"train.lr_step_epochs={max(1, round(0.7 * steps / per_epoch))}"]
    t0 = time.perf_counter()
    ckpt = Path(train(load_config("cpu-demo", settings)))
    minutes = (time.perf_counter() - t0) / 60
    timing.write_text(json.dumps({"minutes": minutes, "steps": steps}))
    return ckpt, minutes


def category_miou(weights: Path, shared: Path) -> dict[str, dict[str, float]]:
    """``{val split: {"miou": ..., "<class>": IoU, ...}}`` of the class map, percent."""
    predictor = Predictor(str(weights), device="cpu")
    classes = tuple(predictor.class_names)
    out = {}
    for es in real_specs(shared):
        ds = open_set(es, "val", classes)
        if ds is None:
            continue
        lut = class_lut(classes, tuple(ds.classes))
        ev = Evaluator(ds.classes)
        for i in range(len(ds)):
            sample = ds[i]
            predictor.set_image(sample.image)
            h, w = sample.class_map.shape
            none = Instances(np.zeros((0, h, w), bool), np.zeros(0), np.zeros(0))
            ev.add(sample, none, lut[predictor.class_map()].astype(np.uint8))
        m = ev.result()
        iou = dict(zip(("background", *ds.classes), (100 * m.class_iou()).tolist()))
        out[es.name] = {"miou": m.miou, **{k: v for k, v in iou.items() if math.isfinite(v)}}
    return out


def network_seconds(weights: Path, repeat: int) -> float:
    """Median seconds of the category network on a 640x480 photo (after one warm-up)."""
    predictor = Predictor(str(weights), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    predictor.set_image(image)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"],
                    help="EfficientNet-Lite backbones (the first is the baseline)")
    ap.add_argument("--steps", type=int, default=900, help="stage-1 steps of each backbone")
    ap.add_argument("--synthetic", type=int, default=100, help="synthetic training images")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=5, help="timed forwards per backbone")
    ap.add_argument("--out", type=Path, default=Path("runs/backbone-accuracy"))
    args = ap.parse_args(argv)
    bad = [b for b in args.backbones if not b.startswith("efficientnet_lite") or b not in BACKBONES]
    if bad:
        print(f"backbone_accuracy.py: {bad[0]!r}: choose EfficientNet-Lite backbones of "
              f"{[b for b in BACKBONES if b.startswith('efficientnet_lite')]}", file=sys.stderr)
        return 2
    shared = find_shared_data()
    if shared is None:
        print("backbone_accuracy.py: the real data (../shared/data or $PFN_SHARED_DATA) was not "
              "found; the comparison trains and evaluates on it", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = demo_train_spec(shared, args.synthetic)
    rows = []
    try:
        for backbone in args.backbones:
            ckpt, minutes = train_category(backbone, args.steps, args.out / backbone, spec)
            rows.append((backbone, minutes, category_miou(ckpt, shared),
                         network_seconds(ckpt, args.repeat)))
    except PFNError as exc:
        print(f"backbone_accuracy.py: {exc}", file=sys.stderr)
        return 2
    sets = list(rows[0][2])
    print(f"\nStage 1 only, {args.steps} steps each, {torch.get_num_threads()} torch threads; "
          "mIoU of the category map on the val splits (percent)\n")
    print("| backbone | minutes | steps/s | " + " | ".join(f"{s} mIoU" for s in sets)
          + " | COCO person IoU | horse IoU | network s (640x480) | mIoU ratio (COCO) | time ratio |")
    print("|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|---:|---:|---:|")
    base_miou, base_s = rows[0][2][sets[0]]["miou"], rows[0][3]
    for backbone, minutes, res, seconds in rows:
        person = res.get("coco-voc", {}).get("person", math.nan)
        horse = res.get("horses", {}).get("horse", math.nan)
        print(f"| {backbone} | {minutes:.1f} | {args.steps / (60 * minutes):.2f} | "
              + " | ".join(f"{res[s]['miou']:.1f}" for s in sets)
              + f" | {person:.1f} | {horse:.1f} | {seconds:.3f} | "
              f"{res[sets[0]]['miou'] / base_miou:.2f} | {seconds / base_s:.2f} |")
    (args.out / "results.json").write_text(json.dumps(
        {b: {"minutes": m, "val": r, "network_s": s} for b, m, r, s in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
