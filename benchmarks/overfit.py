"""Overfit check: can the instance network fit the targets of a few real images?

Trains an instance network (EfficientNet-Lite0 from ImageNet, the shipped recipe's heads) on
N real training images (COCO photos with several objects and Penn-Fudan pedestrians, each
resized to a ``--size`` canvas, no augmentation) and then groups its *own* predicted locations
and counts on the ground-truth class map. If the design works, grouping recovers the images'
instances (AP^r@0.5 near 100); if locations collapse to the image mean it does not.

The same trained network is read twice: on the training canvas, and with the same image
padded onto a canvas twice as large (the objects unchanged). The literal reading of the paper
(locations normalised by the input's size, counts from an average pool) answers differently on
the bigger canvas; the size-consistent parametrisation (``model.location_unit``,
``model.count_head=density``, ``loss.loc_unit``) does not.

    python benchmarks/overfit.py                      # both variants, 6 images (~8 min, 2 cores)
    python benchmarks/overfit.py --variants unit --steps 300

Prints one table: per variant, the final loss, AP^r@0.5 on the training canvas with predicted
and with true counts, AP^r@0.5 on the 2x canvas, and the mean absolute count error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.config import VOC_CLASSES, GroupingConfig, load_config  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.transforms import pad_to, resize_sample  # noqa: E402
from pfn_napari.evaluate import evaluate  # noqa: E402
from pfn_napari.grouping import group, oracle_network_output  # noqa: E402
from pfn_napari.inference import location_scale  # noqa: E402
from pfn_napari.losses import total_loss  # noqa: E402
from pfn_napari.model import build_network, load_backbone_weights  # noqa: E402
from pfn_napari.structures import Sample, grid_size, padded_size  # noqa: E402
from pfn_napari.targets import build_targets  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("PFN_SHARED_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))

#: The two parametrisations compared (model and loss overrides on the cpu-demo recipe).
VARIANTS = {
    "paper": ["model.location_unit=0", "model.count_head=fc", "loss.loc_unit=0",
              "loss.count_reduction=mean", "loss.loc_weight=10"],
    "unit": ["model.location_unit=32", "model.count_head=density", "loss.loc_unit=32",
             "loss.count_reduction=sum", "loss.loc_weight=1"],
}


def pick_images(root: Path, n: int, size: int) -> list[Sample]:
    """``n`` real training images with 2-6 instances each, resized to fit ``size`` pixels."""
    specs = [f"voc:{root / 'coco128-train' / 'voc' / 'VOC2012'}",
             f"folder:{root / 'pennfudan' / 'PNGImages'}:{root / 'pennfudan' / 'PedMasks'}:person"]
    picked: list[Sample] = []
    for spec, want in zip(specs, ((n + 1) // 2, n // 2)):
        data = open_dataset(spec, "train", VOC_CLASSES)
        mine = [s for s in (data[i] for i in range(len(data))) if 2 <= s.num_instances <= 6]
        for s in mine[:want]:
            h, w = s.class_map.shape
            picked.append(resize_sample(s, size / max(h, w)))
    return picked


def canvas_batch(samples: list[Sample], size: int, num_classes: int, encoding: str) -> dict:
    """Each sample padded to ``size x size`` (void labels), with its targets, as one batch."""
    items = [pad_to(s, size, size) for s in samples]
    targets = [build_targets(s, num_classes, encoding) for s in items]
    return {
        "image": torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() for s in items]),
        "class_map": torch.stack([torch.from_numpy(t.class_map) for t in targets]),
        "locations": torch.stack([torch.from_numpy(t.locations) for t in targets]),
        "location_weight": torch.stack([torch.from_numpy(t.location_weight) for t in targets]),
        "counts": torch.stack([torch.from_numpy(t.counts) for t in targets]),
    }


@torch.no_grad()
def read_out(net, sample: Sample, canvas: int, num_classes: int, encoding: str,
             true_counts: bool) -> tuple:
    """Group the network's locations (and counts) for ``sample`` on a ``canvas`` pad."""
    h, w = sample.class_map.shape
    padded = pad_to(sample, canvas, canvas)
    image = torch.from_numpy(padded.image).permute(2, 0, 1)[None].float()
    out = net(image)
    gh, gw = grid_size(h), grid_size(w)
    scale = location_scale(encoding, (h, w), (canvas, canvas))  # canvas -> image normalisation
    oracle = oracle_network_output(sample, num_classes, encoding)  # true classes (and counts)
    counts = out.counts[0].numpy()
    oracle.locations = out.locations[0, :, :gh, :gw].numpy() * scale
    if not true_counts:
        oracle.counts = counts
    return oracle, counts


def run_variant(name: str, samples: list[Sample], args) -> dict:
    cfg = load_config("cpu-demo", [f"model.num_classes={len(VOC_CLASSES)}",
                                   f"data.classes={','.join(VOC_CLASSES)}",
                                   *VARIANTS[name]])
    torch.manual_seed(0)
    net = build_network(cfg.model, "instance")
    load_backbone_weights(net)
    net.train()
    pretrained, new = net.param_groups()
    opt = torch.optim.SGD([{"params": pretrained, "lr": args.lr},
                           {"params": new, "lr": args.lr * 5}], momentum=0.9, weight_decay=5e-4)
    C, enc = cfg.model.num_classes, cfg.model.encoding
    batch = canvas_batch(samples, args.size, C, enc)
    t0 = time.perf_counter()
    for step in range(args.steps):
        loss, parts = total_loss(net(batch["image"]), batch, cfg.loss, "instance")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        if step % max(1, args.steps // 6) == 0 or step == args.steps - 1:
            print(f"  {name} step {step:4d}: loss {parts['total']:.4f} (loc {parts['loc']:.4f}, "
                  f"count {parts['count']:.4f})", flush=True)
    seconds = time.perf_counter() - t0
    net.eval()
    grouping = GroupingConfig(method="vote")
    row = {"variant": name, "loss": parts["total"], "train_s": seconds}
    for label, canvas, true_counts in (("ap_pred", args.size, False), ("ap_true", args.size, True),
                                       ("ap_2x", padded_size(2 * args.size), False)):
        preds, errors = [], []
        for s in samples:
            oracle, counts = read_out(net, s, canvas, C, enc, true_counts)
            inst = group(oracle, grouping)
            preds.append(inst)
            truth = build_targets(s, C, enc).counts
            errors.append(np.abs(counts - truth)[truth > 0].mean())
        row[label] = evaluate(samples, preds, VOC_CLASSES).ap_r["0.5"]
        row["count_err" if canvas == args.size else "count_err_2x"] = float(np.mean(errors))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the shared data folder")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=193, help="training canvas (8k+1)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.002, help="pre-trained layers (new: 5x)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "coco128-train").is_dir():
        print(f"benchmarks/overfit.py: no real data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    samples = pick_images(args.data, args.images, args.size)
    n_inst = sum(s.num_instances for s in samples)
    print(f"{len(samples)} images, {n_inst} instances, canvas {args.size}, {args.steps} steps")
    rows = [run_variant(v, samples, args) for v in args.variants]
    print("\n| variant | final loss | AP^r@0.5 (pred. counts) | AP^r@0.5 (true counts) | "
          "AP^r@0.5 on a 2x canvas | count error | count error 2x | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['loss']:.4f} | {r['ap_pred']:.1f} | {r['ap_true']:.1f} | "
              f"{r['ap_2x']:.1f} | {r['count_err']:.2f} | {r['count_err_2x']:.2f} | "
              f"{r['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
