"""The location streams taught on whole photos (an experiment, not a recipe of ``pfn finetune``).

Continues the location streams of a model (``--learn``: parameter prefixes of the instance
network, default its five streams and their fusion) on whole photos, one photo a step, at a
random scale in ``--scale`` with flips; the instance backbone, the count head and the category
network are kept. The loss is the streams' location loss of ``pfn train`` (every stream and the
fused output, in ``loss.loc_unit`` pixels), the counts left out (``--count-weight W --learn
location_head.,count_head.``: the count head learns too, from the whole photos' true counts).
Then it measures AP^r@0.5, AP^r_vol and mIoU of the start and of the result on the held-out
photos, as ``pfn finetune`` measures them. docs/finetune.md ("On whole photos the streams
learn") has the numbers:

    python benchmarks/whole_photo_streams.py --kind pennfudan --n 20 --steps 100 --lr 0.0005
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_loop import KINDS, held_out_metrics, prepare_kind, save_taught  # noqa: E402

from pfn_napari.checkpoint import load_checkpoint, save_weights  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec  # noqa: E402
from pfn_napari.data.loader import TrainingSet, collate  # noqa: E402
from pfn_napari.data.transforms import hflip, resize_sample  # noqa: E402
from pfn_napari.losses import total_loss  # noqa: E402


def whole_photos(scale: tuple[float, float]):
    """``(sample, rng) -> sample``: the whole photo at a random scale, flipped half the time."""
    def transform(sample, rng):
        sample = resize_sample(sample, float(rng.uniform(*scale)))
        return hflip(sample) if rng.random() < 0.5 else sample
    return transform


def teach_streams(weights: Path, folder: Path, out: Path, steps: int, lr: float,
                  scale: tuple[float, float], learn: tuple[str, ...], seed: int = 0,
                  count_weight: float = 0.0) -> Path:
    """``weights`` with the instance parameters named by ``learn`` trained ``steps`` steps on
    the corrections in ``folder``; saved as ``out``."""
    torch.manual_seed(seed)
    system, cfg, meta = load_checkpoint(weights)
    data = open_dataset(correction_spec(folder), "all", list(cfg.data.classes))
    items = TrainingSet([data[i] for i in range(len(data))], whole_photos(scale),
                        cfg.model.num_classes, cfg.model.encoding, seed=seed)
    net = system.instance
    params = []
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(learn))
        params += [p] if p.requires_grad else []
    for p in system.category.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.0005)
    loss_cfg = dataclasses.replace(cfg.loss, count_weight=count_weight)
    net.eval()  # the kept layers as at test time; the streams have no dropout or batch norm
    rng, order, tic = np.random.default_rng(seed), [], time.perf_counter()
    for step in range(steps):
        if not order:
            order = [int(i) for i in rng.permutation(len(items))]
            items.set_epoch(step)
        batch = collate([items[order.pop()]])
        loss, parts = total_loss(net(batch["image"]), batch, loss_cfg, "instance")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip or 10.0)
        optimizer.step()
        if (step + 1) % 20 == 0 or step + 1 == steps:
            print(f"step {step + 1}: location loss {parts['loc']:.3f} (fused "
                  f"{parts['loc/fused']:.3f})"
                  + (f", count loss {parts['count']:.3f}" if count_weight > 0 else "")
                  + f", {(time.perf_counter() - tic) / (step + 1):.2f} s a step", flush=True)
    return save_weights(out, system, cfg, meta=dict(meta))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--kind", default="pennfudan", choices=list(KINDS))
    p.add_argument("--n", type=int, default=20, help="photos taught")
    p.add_argument("--weights", default=None, help="the start (default: the kind's start)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.0005)
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 1.0])
    p.add_argument("--learn", default="location_head.",
                   help="comma-separated prefixes of the instance network's parameters")
    p.add_argument("--count-weight", type=float, default=0.0,
                   help="weight of the count loss (0: the counts left out; learn count_head. "
                        "to teach them)")
    p.add_argument("--eval-limit", type=int, default=20, help="held-out photos")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="whole-streams-"))
    work.mkdir(parents=True, exist_ok=True)
    start, held, pool = prepare_kind(args.kind, args, work)
    start = Path(args.weights) if args.weights else start
    folder = work / f"{args.kind}-n{args.n}"
    save_taught(args.kind, pool, folder, args.n)
    out = teach_streams(start, folder, work / "streams.pt", args.steps, args.lr,
                        tuple(args.scale), tuple(args.learn.split(",")),
                        count_weight=args.count_weight)
    print(f"| {args.kind} | {args.n} | {args.steps} | lr {args.lr:g} | AP^r@0.5 | AP^r_vol "
          "| mIoU |")
    for name, w in (("start", start), ("streams taught", out)):
        m = held_out_metrics(w, held)
        print(f"| {name} | | | | {m['APr@0.5']:.1f} | {m['APr_vol']:.1f} | {m['mIoU']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
