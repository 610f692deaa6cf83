"""Per true object of a held-out set: how well each model finds it, to read a change in AP^r.

AP^r@0.5 on a few held-out photos moves by whole objects crossing IoU 0.5. This prints, for
every true object of the kind's class on the held-out photos of ``benchmarks/finetune_loop.py``
(``--kind``), its area and, per model in ``--weights``: the best IoU of a shown object of its
class (with the model's own locations, and with ``--oracle-locations`` also with the true
locations clustered on the model's map, as ``pfn evaluate --oracle-locations``) and the share
of the object the model's class map gives to the class ("cover"). A last row counts the objects
at IoU >= 0.5 per column. docs/finetune.md ("Both folds of the unseen pedestrians") reads one:

    python benchmarks/per_person.py --kind pennfudan-new-b --oracle-locations \
        --weights default runs/fold-b/last.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_loop import KINDS, prepare_kind  # noqa: E402

from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec  # noqa: E402
from pfn_napari.evaluate import mask_ious  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402
from pfn_napari.producers import model_producer  # noqa: E402


def best_ious(predictor: Predictor, data, oracle_locations: bool
              ) -> list[tuple[str, int, int, float, float]]:
    """``(photo, object id, area, best IoU of a shown object of its class, cover)`` for every
    true object of ``data`` (a dataset in its own classes)."""
    produce = model_producer(predictor, data, oracle_locations=oracle_locations)
    rows = []
    for i in range(len(data)):
        sample = data[i]
        inst, class_map = produce(i, sample)  # instances and class map in the data's ids
        for k, cls in enumerate(sample.instance_classes):
            if cls <= 0:
                continue
            truth = sample.instance_map == k + 1  # (H, W)
            # (K, 1): the shown objects of its class against it
            best = float(mask_ious(inst.masks[inst.classes == cls], truth[None]).max(initial=0.0))
            cover = float(((class_map == cls) & truth).sum()) / float(truth.sum())
            rows.append((str(sample.image_id), k + 1, int(truth.sum()), best, cover))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--kind", default="pennfudan-new-b", choices=list(KINDS))
    p.add_argument("--weights", nargs="+", default=["default"],
                   help="models to compare ('default': the shipped one)")
    p.add_argument("--oracle-locations", action="store_true",
                   help="also the best IoU with the true locations on each model's map")
    p.add_argument("--eval-limit", type=int, default=20, help="held-out photos")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="folder for the held-out set (default: temp)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="per-person-"))
    work.mkdir(parents=True, exist_ok=True)
    _, held, _ = prepare_kind(args.kind, args, work)
    data = open_dataset(correction_spec(held), "all", None)
    columns: list[tuple[str, list]] = []
    covers: list[tuple[str, list]] = []
    for w in args.weights:
        predictor = Predictor(w, device="cpu", crf=False)
        own = best_ious(predictor, data, False)
        columns.append((f"{Path(w).name} IoU", own))
        if args.oracle_locations:
            columns.append((f"{Path(w).name} IoU, true locations",
                            best_ious(predictor, data, True)))
        covers.append((f"{Path(w).name} cover", own))
    print("| photo | object | area (px) | " + " | ".join(n for n, _ in columns + covers) + " |")
    print("|---|---:|---:|" + "---:|" * (len(columns) + len(covers)))
    first = columns[0][1]
    for j, (photo, obj, area, _, _) in enumerate(first):
        cells = [f"{rows[j][3]:.2f}" for _, rows in columns]
        cells += [f"{rows[j][4]:.2f}" for _, rows in covers]
        print(f"| {photo} | {obj} | {area} | " + " | ".join(cells) + " |")
    found = [f"{sum(r[3] >= 0.5 for r in rows)} of {len(rows)}" for _, rows in columns]
    print("| IoU >= 0.5 | | | " + " | ".join(found + [""] * len(covers)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
