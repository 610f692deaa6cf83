"""Could the votes split merged people? Each shown person against the boxes its own cells vote for.

Issue 26 asks that an instance holding two or more people be split. Inside one instance the
votes (the box each cell's decoded location points at) would say where: if the cells of a
merge vote for two distinct boxes, :func:`~pfn_napari.grouping.votes.vote_count` on them finds
2 or more and the instance could be cut along them. This counts, for the person instances a
model shows on real val photos, how often that happens to merges and how often to instances
that are right (a cut there makes two wrong objects of one right one):

* ``merge``: the instance covers at least half of each of two or more true people;
* ``right``: not a merge, IoU >= 0.5 with a true person;
* ``other``: neither (off any person, or a poor cover of one).

For each ``votes.iou / votes.min_frac / votes.merge_iou`` of ``--votes`` it prints one table
row per set: ``split / all`` of each kind (split: the instance's own cells vote for 2 or more
distinct boxes). Sets: the Penn-Fudan and COCO-VOC val photos, and the crowded COCO-VOC
training photos (the shipped model was trained on them). Shipped test-time settings otherwise.
docs/experiments/grouping.md has the numbers:

    python benchmarks/merge_votes.py --votes 0.6,0.1,0.3 0.5,0.15,0.3 0.6,0.2,0.3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.demo import real_specs  # noqa: E402
from pfn_napari.evaluate import mask_ious  # noqa: E402
from pfn_napari.grouping.votes import vote_count  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402

KINDS = ("merge", "right", "other")


def kind_of(mask: np.ndarray, people: list[np.ndarray]) -> str:
    """``merge`` / ``right`` / ``other`` of one shown ``mask`` ``(H, W)`` against the true
    people's masks (module docstring)."""
    covered = sum(int((mask & p).sum()) >= 0.5 * int(p.sum()) for p in people)
    if covered >= 2:
        return "merge"
    truth = np.array(people, dtype=bool).reshape(-1, *mask.shape)  # (G, H, W)
    return "right" if mask_ious(mask[None], truth).max(initial=0.0) >= 0.5 else "other"


def photo_rows(predictor: Predictor, sample, person_model: int, person_data: int,
               votes: list[tuple[float, float, float]]) -> list[tuple[str, int, bool]]:
    """``(kind, votes index, split)`` for every person instance shown on one photo."""
    predictor.set_image(sample.image, name=str(sample.image_id))
    result = predictor.group()
    if person_model not in result.cluster_counts:
        return []
    data = predictor.grouper.class_data(person_model, result.refined_class_map == person_model)
    owner = result.grid_labels[data.rows, data.cols]  # (n,) instance 1..N of each cell
    people = [sample.instance_map == k + 1 for k, c in enumerate(sample.instance_classes)
              if c == person_data]
    rows = []
    for n, (mask, cls) in enumerate(zip(result.instances.masks, result.instances.classes)):
        if cls != person_model:
            continue
        boxes = data.descriptors[owner == n + 1, 2:6]  # (m, 4) the boxes its cells vote for
        kind = kind_of(mask, people)
        for v, (iou, min_frac, merge_iou) in enumerate(votes):
            split = len(boxes) > 1 and vote_count(boxes, iou, min_frac, merge_iou) >= 2
            rows.append((kind, v, split))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--data-root", default=os.environ.get(
        "PFN_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--votes", nargs="+", default=["0.6,0.1,0.3"],
                   help="iou,min_frac,merge_iou of vote_count (the shipped: 0.6,0.1,0.3)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    votes = [tuple(float(x) for x in v.split(",")) for v in args.votes]
    real = {es.name: es for es in real_specs(Path(args.data_root))}
    sets = {"Penn-Fudan val": (real["pennfudan"], "val"),
            "COCO-VOC val": (real["coco-voc"], "val"),
            "COCO-VOC train (trained on)": (real["coco-voc"], "train")}
    predictor = Predictor(args.weights, device="cpu", crf=False)
    person_model = list(predictor.class_names).index("person") + 1
    print("| set | votes (iou, min_frac, merge_iou) | merges split | right split | "
          "other split |")
    print("|---|---|---:|---:|---:|")
    for name, (es, split) in sets.items():
        data = open_dataset(es.spec, split, es.classes)
        person_data = list(data.classes).index("person") + 1
        rows = [r for i in range(len(data))
                for r in photo_rows(predictor, data[i], person_model, person_data, votes)]
        for v, values in enumerate(votes):
            cells = []
            for kind in KINDS:
                mine = [split for k, vi, split in rows if k == kind and vi == v]
                cells.append(f"{sum(mine)} / {len(mine)}")
            print(f"| {name} | {', '.join(f'{x:g}' for x in values)} | " + " | ".join(cells)
                  + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
