"""How well a model's location maps separate the people of one photo (``own_box_share``).

For every person of every photo with two or more people, the share of its stride-8 cells whose
predicted box is nearer its own true box than any other person's of the photo
(:func:`pfn_napari.grouping.own_box_share`): 1.0 when the instance network separates them,
low when the boxes of a crowd collapse towards one place and grouping merges the people. Read
beside AP^r: it does not depend on the category map, the counts or the grouping settings, and
it moves smoothly where AP^r on a 17-photo split jumps.

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
from pfn_napari.grouping import own_box_share  # noqa: E402
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


def person_shares(predictor: Predictor, spec: str, split: str,
                  classes: tuple[str, ...] | None) -> list[tuple[float, int]]:
    """``(share, cells)`` of every person in the photos of the set with two or more people."""
    data = open_dataset(spec, split, classes)
    person = list(data.classes).index("person") + 1
    out = []
    for sample in data:
        ids = np.flatnonzero(np.asarray(sample.instance_classes) == person) + 1  # (P,)
        if len(ids) < 2:
            continue
        predictor.set_image(sample.image, name=str(sample.image_id))
        shares = own_box_share(predictor.net, sample.instance_map, ids)
        if len(shares) >= 2:
            out += list(shares.values())
    return out


def summarise(rows: list[tuple[float, int]]) -> dict[str, tuple[float, int]]:
    """Mean share and number of people, over all and per size bucket."""
    out = {"all": (float(np.mean([s for s, _ in rows])) if rows else float("nan"), len(rows))}
    for name, lo, hi in SIZES:
        part = [s for s, n in rows if lo <= n < hi]
        out[name] = (float(np.mean(part)) if part else float("nan"), len(part))
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
            results[w] = {name: summarise(person_shares(predictor, spec, split, classes))
                          for name, spec, split, classes in found}
    except PFNError as exc:
        print(f"separation.py: {exc}", file=sys.stderr)
        return 2
    base = results[args.weights[0]]
    head = ["set", "people", *[f"{w.parent.name}/{w.name}" for w in args.weights]]
    head += [f"ratio {i}/0" for i in range(1, len(args.weights))]
    print("Share of each person's cells nearer its own box than a neighbour's (mean over people)\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, *_ in found:
        for bucket in ("all", *[s[0] for s in SIZES]):
            b, n = base[name][bucket]
            vals = [results[w][name][bucket][0] for w in args.weights]
            cells = [f"{name} {bucket}", str(n), *[f"{v:.3f}" for v in vals]]
            cells += [f"{v / b:.2f}" if b > 0 else "-" for v in vals[1:]]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
