"""How a model's location streams do on training crops against whole photos.

The fine-tuning recipe cuts 193-pixel crops; a photo is tested whole. For each set of person
photos this prints the location loss of the fused stream (smooth L1 in ``loss.loc_unit``-pixel
units per person cell, as ``pfn train`` and ``pfn finetune`` compute it; lower is better) on
the recipe's crops (193 pixels, scale 0.6-1.4, flips; two seeded passes) and on the whole
photos, for each ``--weights``; the first is the baseline of the ratio columns. A model whose
crop loss falls while its whole-photo loss rises has learnt the crops, not the photos
(docs/finetune.md, "Teaching the location streams").

Sets (``../shared/data``): the first 20 COCO train photos with people (VOC layout; the shipped
model was trained on them), the 13 COCO val photos with people, the first 20 Penn-Fudan val
photos; each person photo's people are its labels (other classes are background), as
``benchmarks/finetune_loop.py`` saves them.

    python benchmarks/location_views.py --weights weights/pfn-lite0-voc.pt runs/ft/last.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_loop import save_photos  # noqa: E402

from pfn_napari.checkpoint import load_checkpoint  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec  # noqa: E402
from pfn_napari.data.loader import TrainingSet, collate  # noqa: E402
from pfn_napari.data.transforms import TrainTransform  # noqa: E402
from pfn_napari.losses import location_loss, location_units  # noqa: E402

#: name -> (data spec under the data root, split, photos)
SETS = {
    "COCO train (taught)": ("voc:{root}/coco128-train/voc/VOC2012", "train", 20),
    "COCO val": ("voc:{root}/coco128-train/voc/VOC2012", "val", 20),
    "Penn-Fudan val": ("folder:{root}/pennfudan/PNGImages:{root}/pennfudan/PedMasks:person",
                       "val", 20),
}
#: the fine-tuning recipe's crops (configs/finetune-cpu.yaml)
CROP, SCALES, PASSES = 193, (0.6, 1.4), 2


def fused_loss(system, cfg, samples, transform, passes: int = 1) -> float:
    """Mean over items of the fused stream's location loss (items without a person skipped)."""
    items = TrainingSet(samples, transform, cfg.model.num_classes, cfg.model.encoding, seed=0)
    values = []
    with torch.no_grad():
        for epoch in range(passes):
            items.set_epoch(epoch)
            for i in range(len(items)):
                batch = collate([items[i]])
                weight = batch["location_weight"]  # (1, h, w)
                if float(weight.sum()) == 0:
                    continue
                pred = system.instance(batch["image"]).locations  # (1, L, h', w')
                target = batch["locations"]  # (1, L, h, w)
                h = min(target.shape[-2], pred.shape[-2])
                w = min(target.shape[-1], pred.shape[-1])
                units = (location_units(target.shape[1], tuple(batch["image"].shape[-2:]),
                                        cfg.loss.loc_unit, target) if cfg.loss.loc_unit > 0
                         else torch.ones(1, target.shape[1], 1, 1))  # (1, L, 1, 1)
                values.append(float(location_loss(pred[..., :h, :w] * units,
                                                  target[..., :h, :w] * units,
                                                  weight[..., :h, :w])))
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", default=["weights/pfn-lite0-voc.pt"])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="location-views-"))
    sets = {}
    for name, (spec, split, limit) in SETS.items():
        folder = work / name.replace(" ", "-")
        save_photos(open_dataset(spec.format(root=args.data_root), split, ["person"]), "person",
                    folder, limit)
        sets[name] = folder
    crops = TrainTransform(CROP, *SCALES, flip=True)
    rows = {}
    for w in args.weights:
        system, cfg, _ = load_checkpoint(w)
        system.eval()
        for name, folder in sets.items():
            data = open_dataset(correction_spec(folder), "all", list(cfg.data.classes))
            samples = [data[i] for i in range(len(data))]
            rows.setdefault(name, []).append(
                (len(samples), fused_loss(system, cfg, samples, crops, PASSES),
                 fused_loss(system, cfg, samples, None)))
    names = [Path(w).parent.name + "/" + Path(w).name for w in args.weights]
    head = "| set | photos | " + " | ".join(f"{n} crops | {n} whole" for n in names)
    if len(names) > 1:
        head += " | " + " | ".join(f"ratio {i}/0 crops | ratio {i}/0 whole"
                                   for i in range(1, len(names)))
    print(head + " |")
    print("|---" * (2 + 2 * len(names) + 2 * (len(names) - 1)) + "|")
    for name, cells in rows.items():
        line = f"| {name} | {cells[0][0]} | " + " | ".join(f"{c:.3f} | {h:.3f}"
                                                          for _, c, h in cells)
        if len(cells) > 1:
            line += " | " + " | ".join(f"{c / cells[0][1]:.2f} | {h / cells[0][2]:.2f}"
                                       for _, c, h in cells[1:])
        print(line + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
