"""The count head alone, trained on whole photos after stage 2 (a candidate third stage).

Stage 2 trains the count head on the recipe's crops (257 pixels, scale 0.6-1.4), and the model
counts whole photos. This continues a stage-2 checkpoint's count head alone (everything else
frozen and in eval mode, counts gated by the category network as in stage 2) on the training
photos whole: 641-pixel canvases at scale 1 (every photo of ../shared/data fits), flips, two
photos a step, SGD (momentum 0.9, weight decay 5e-4, gradient norm clipped at 10) at a constant
rate, the recipe's count loss. It prints the loss every 25 steps and writes a weights file that
``pfn evaluate`` reads (docs/experiments/training.md, "The counts on whole photos").

    python benchmarks/whole_photo_counts.py runs/results/pfn/instance/final.pt runs/counts.pt \\
        --steps 150 --lr 0.001
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.checkpoint import load_checkpoint, save_weights  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.loader import TrainingSet, collate  # noqa: E402
from pfn_napari.data.transforms import TrainTransform  # noqa: E402
from pfn_napari.demo import demo_train_spec, find_shared_data  # noqa: E402
from pfn_napari.losses import count_loss  # noqa: E402

#: Canvas of a whole photo (8k + 1, at least the largest side of the photos of ../shared/data).
CANVAS = 641


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="a stage-2 (instance) checkpoint or weights file")
    p.add_argument("out", help="the weights file to write")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    system, cfg, meta = load_checkpoint(args.weights)
    if system.instance is None or system.instance.count_head is None:
        raise SystemExit(f"{args.weights}: no instance network with a count head (stage 2 needed)")
    system.eval()  # frozen BatchNorm statistics, no dropout
    for param in system.parameters():
        param.requires_grad_(False)
    head = system.instance.count_head
    for param in head.parameters():
        param.requires_grad_(True)
    data = open_dataset(demo_train_spec(find_shared_data(), 300), "train", cfg.data.classes)
    photos = TrainingSet(data, TrainTransform(CANVAS, 1.0, 1.0, True, count_share=True),
                         cfg.model.num_classes, cfg.model.encoding, seed=args.seed)
    opt = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    order = np.random.default_rng(args.seed).permutation(len(photos))  # (N,)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(args.steps):
        first = (args.batch * step) % len(photos)
        batch = collate([photos[int(i)] for i in order[first:first + args.batch]])
        counts = system(batch["image"]).counts  # (B, C), gated as at test time
        loss = count_loss(counts, batch["counts"], cfg.loss.count_reduction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: count loss {np.mean(losses[-25:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    save_weights(args.out, system, cfg, meta)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
