"""How well a model's location maps separate the people of one photo (``own_box_share``).

For every person of every photo with two or more people, the share of its stride-8 cells whose
predicted box is nearer its own true box than any other person's of the photo
(:func:`pfn_napari.grouping.own_box_share`): 1.0 when the instance network separates them,
low when the boxes of a crowd collapse towards one place and grouping merges the people. Read
beside AP^r: it does not depend on the category map, the counts or the grouping settings, and
it moves smoothly where AP^r on a 17-photo split jumps.

Two more tables read the same people (``pfn_napari.grouping.box_agreement``): the *agreement*,
the share of pairs of a person's cells whose boxes overlap by IoU > 0.6 (what the vote grouping
needs: one object, one box voted for), and the *width ratio*, the mean width of the boxes its
cells vote for over its true box's (1.0: the true width). Separation alone is not enough: a
20-minute model trained with `loss.separation_weight` separated better on every set and grouped
worse, its cells no longer agreeing (docs/experiments/training.md).

Sets (``../shared/data`` or ``$PFN_SHARED_DATA``): the COCO photos in VOC layout (``train``,
which the shipped weights were trained on, crowded; ``val``) and the Penn-Fudan val split.
People are grouped by size on the grid: tiny (< 6 cells), small (6-29), large (30+).
The first ``--weights`` is the baseline; the table gives each other's ratio against it.

    python benchmarks/separation.py                                   # the shipped weights
    python benchmarks/separation.py --weights weights/pfn-lite0-voc.pt runs/b1/pfn-lite0-voc.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.grouping import box_agreement, own_box_share  # noqa: E402
from pfn_napari.inference import default_weights_path  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("PFN_SHARED_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZES = (("tiny", 0, 6), ("small", 6, 30), ("large", 30, 10**9))


def sets(root: Path) -> list[tuple[str, str, str, tuple[str, ...] | None]]:
    """``(name, spec, split, classes)`` of the sets found under ``root``."""
    voc = root / "coco128-train" / "voc" / "VOC2012"
    pf = root / "pennfudan"
    out = []
    if voc.is_dir():
        out += [("coco train", f"voc:{voc}", "train", None), ("coco val", f"voc:{voc}", "val", None)]
    if (pf / "PNGImages").is_dir():
        out.append(("pennfudan val", f"folder:{pf / 'PNGImages'}:{pf / 'PedMasks'}", "val",
                    ("person",)))
    return out


#: The tables: (title, index of the value in a person's row).
MEASURES = (("Share of each person's cells nearer its own box than a neighbour's", 0),
            ("Agreement: share of pairs of a person's cells whose boxes overlap by IoU > 0.6", 2),
            ("Width ratio: mean width of the boxes a person's cells vote for / its true width", 3))


def person_rows(predictor: Predictor, spec: str, split: str,
                classes: tuple[str, ...] | None) -> list[tuple[float, int, float, float]]:
    """``(share, cells, agreement, width ratio)`` of every person in the photos of the set with
    two or more people."""
    data = open_dataset(spec, split, classes)
    person = list(data.classes).index("person") + 1
    out = []
    for sample in data:
        ids = np.flatnonzero(np.asarray(sample.instance_classes) == person) + 1  # (P,)
        if len(ids) < 2:
            continue
        predictor.set_image(sample.image, name=str(sample.image_id))
        shares = own_box_share(predictor.net, sample.instance_map, ids)
        if len(shares) < 2:
            continue
        agreement = box_agreement(predictor.net, sample.instance_map, list(shares))
        out += [(share, cells, agreement[k][0], agreement[k][1])
                for k, (share, cells) in shares.items()]
    return out


def summarise(rows: list[tuple], value: int = 0) -> dict[str, tuple[float, int]]:
    """Mean of ``row[value]`` and the number of people, over all and per size bucket."""
    def mean(part: list[tuple]) -> float:
        return float(np.mean([r[value] for r in part])) if part else float("nan")

    out = {"all": (mean(rows), len(rows))}
    for name, lo, hi in SIZES:
        part = [r for r in rows if lo <= r[1] < hi]
        out[name] = (mean(part), len(part))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", type=Path, default=[default_weights_path()],
                        help="weights files; the first is the baseline")
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the shared data folder")
    args = parser.parse_args(argv)
    found = sets(args.data)
    if not found:
        print(f"separation.py: no COCO-VOC or Penn-Fudan data under {args.data}", file=sys.stderr)
        return 2
    results = {}
    try:
        for w in args.weights:
            predictor = Predictor(w, device="cpu")
            results[w] = {name: person_rows(predictor, spec, split, classes)
                          for name, spec, split, classes in found}
    except PFNError as exc:
        print(f"separation.py: {exc}", file=sys.stderr)
        return 2
    head = ["set", "people", *[f"{w.parent.name}/{w.name}" for w in args.weights]]
    head += [f"ratio {i}/0" for i in range(1, len(args.weights))]
    for title, value in MEASURES:
        table = {w: {name: summarise(rows, value) for name, rows in results[w].items()}
                 for w in args.weights}
        base = table[args.weights[0]]
        print(f"{title} (mean over people)\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for name, *_ in found:
            for bucket in ("all", *[s[0] for s in SIZES]):
                b, n = base[name][bucket]
                vals = [table[w][name][bucket][0] for w in args.weights]
                cells = [f"{name} {bucket}", str(n), *[f"{v:.3f}" for v in vals]]
                cells += [f"{v / b:.2f}" if b > 0 else "-" for v in vals[1:]]
                print("| " + " | ".join(cells) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
