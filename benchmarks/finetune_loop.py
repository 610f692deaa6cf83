"""The fine-tuning loop of napari, simulated on the real photos of ``../shared/data``.

For each kind of photo: take the first N photos of its training split as the user's corrections
(their true masks, saved with :func:`~pfn_napari.data.corrections.save_correction`), fine-tune
the shipped weights on them for M CPU minutes (:func:`~pfn_napari.finetune.finetune`), and
measure AP^r@0.5 and mIoU on a fixed held-out set of the same kind (its val split) before and
after. Kinds:

* ``person-coco``: the people of the COCO photos (coco128, VOC layout), a class the shipped
  model has but finds poorly;
* ``horse-new``: a class the model does not know: the shipped weights with the horse channels
  removed (:func:`~pfn_napari.finetune.drop_classes`), taught from Weizmann horses;
* ``pennfudan``: the Penn-Fudan pedestrians;
* ``pennfudan-new``: Penn-Fudan pedestrians the shipped model never saw: taught from the first
  N (at most 20) val photos, measured on the val photos after the first 20 (the other kinds
  teach photos of their training split, which the shipped model was trained on);
* ``pennfudan-new-b``: the other fold of those 34 photos: taught from the val photos after the
  first 14, measured on the first 14.

    python benchmarks/finetune_loop.py --kinds horse-new --n 5 20 --minutes 2 --threads 2

prints one markdown table row per run (and writes them to ``--table``). The minutes are wall
clock, so the numbers depend on the machine's load; ``--steps-per-minute R`` trains M x R steps
instead (R measured on the idle machine), which gives the idle machine's result on a busy one.

``--along 100 200 ...`` runs each N once as a user runs ``pfn finetune`` (every 5th photo held
back, the start kept when those score it higher) and measures it at each of those step counts:

    python benchmarks/finetune_loop.py --kinds pennfudan-new --n 20 \
        --along 100 200 300 400 500 600 800 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.checkpoint import load_checkpoint, save_weights  # noqa: E402
from pfn_napari.config import VOID  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec, save_correction  # noqa: E402
from pfn_napari.finetune import add_classes, drop_classes, finetune, plan_classes  # noqa: E402
from pfn_napari.inference import default_weights_path  # noqa: E402


@dataclass(frozen=True)
class Kind:
    """One kind of photos: the data spec under the data root, the split taught from and the
    held-out split, the class, whether the shipped model has the class hidden first, the photos
    of the held-out split left out before it (``held_skip``) and at most how many it holds
    (``held_max``), and the photos of the taught split left out before the N taught
    (``teach_skip``)."""

    spec: str
    train_split: str
    val_split: str
    cls: str
    hide: bool = False
    held_skip: int = 0
    held_max: int | None = None
    teach_skip: int = 0


PENNFUDAN = "folder:{root}/pennfudan/PNGImages:{root}/pennfudan/PedMasks:person"
KINDS = {
    "person-coco": Kind("voc:{root}/coco128-train/voc/VOC2012", "train", "val", "person"),
    # the recipe was chosen on the first 30 val horses
    "horse-new": Kind("folder:{root}/weizmann-horse/images:{root}/weizmann-horse/masks:horse",
                      "train", "val", "horse", hide=True, held_skip=30),
    "pennfudan": Kind(PENNFUDAN, "train", "val", "person"),
    # pedestrians the shipped model never saw: taught from the first N (<= 20) Penn-Fudan val
    # photos, measured on the val photos after the first 20 (14 photos, 37 people)
    "pennfudan-new": Kind(PENNFUDAN, "val", "val", "person", held_skip=20),
    # the other fold of the same 34 photos: taught from the val photos after the first 14 (the
    # last 20), measured on the first 14 (30 people)
    "pennfudan-new-b": Kind(PENNFUDAN, "val", "val", "person", held_max=14, teach_skip=14),
}


def save_photos(dataset, cls: str, folder: Path, limit: int, skip: int = 0) -> int:
    """The first ``limit`` photos of ``dataset`` holding a ``cls`` instance after the first
    ``skip`` such photos, saved as corrections (their true masks; void becomes background);
    how many were saved."""
    saved, seen = 0, 0
    for i in range(len(dataset)):
        if saved >= limit:
            break
        s = dataset[i]
        ids = [k + 1 for k, c in enumerate(s.instance_classes) if c > 0]
        if not ids:
            continue
        seen += 1
        if seen <= skip:
            continue
        labels = np.where(s.instance_map == VOID, 0, s.instance_map).astype(np.int64)
        labels[~np.isin(labels, ids)] = 0
        save_correction(folder, s.image, labels, {k: cls for k in ids}, str(s.image_id))
        saved += 1
    return saved


def start_weights(hide: str | None, work: Path) -> Path:
    """The shipped weights, or a copy without the class ``hide``."""
    if not hide:
        return default_weights_path()
    system, cfg, _ = load_checkpoint(default_weights_path())
    cfg = drop_classes(system, cfg, [hide])
    return save_weights(work / f"shipped-without-{hide}.pt", system, cfg)


def prepare_kind(kind: str, args, work: Path):
    """``(start weights, held-out folder, training pool)`` of ``kind``; the held-out photos
    are saved once per work folder (the N taught: :func:`save_taught`)."""
    k = KINDS[kind]
    spec = k.spec.format(root=args.data_root)
    weights = start_weights(k.cls if k.hide else None, work)
    held = work / f"{kind}-heldout"
    if not held.exists():
        limit = min(args.eval_limit, k.held_max or args.eval_limit)
        save_photos(open_dataset(spec, k.val_split, [k.cls]), k.cls, held, limit, k.held_skip)
    return weights, held, open_dataset(spec, k.train_split, [k.cls])


def save_taught(kind: str, pool, folder: Path, n: int) -> int:
    """The N photos of ``kind`` taught, saved as corrections in ``folder``; how many."""
    k = KINDS[kind]
    return save_photos(pool, k.cls, folder, n, k.teach_skip)


def run_kind(kind: str, args, work: Path) -> list[str]:
    weights, held, pool = prepare_kind(kind, args, work)
    rows = []
    for n in args.n:
        folder = work / f"{kind}-n{n}"
        got = save_taught(kind, pool, folder, n)
        for minutes in args.minutes:
            out = work / f"{kind}-n{n}-m{minutes:g}"
            tic = time.perf_counter()
            steps = round(minutes * args.steps_per_minute)  # 0: the wall clock decides
            r = finetune(weights, correction_spec(folder), out, 0 if steps else minutes,
                         val=correction_spec(held), seed=args.seed, threads=args.threads,
                         max_steps=steps, recipe=args.recipe)
            row = (f"| {kind} | {got} | {minutes:g} | {r.steps} | "
                   f"{r.before['APr@0.5']:.1f} | {r.after['APr@0.5']:.1f} | "
                   f"{r.before['mIoU']:.1f} | {r.after['mIoU']:.1f} | "
                   f"{(time.perf_counter() - tic) / 60:.1f} |")
            print(row, flush=True)
            rows.append(row)
    return rows


def held_out_metrics(weights: Path, held: Path) -> dict:
    """AP^r@0.5 and mIoU of ``weights`` on the held-out corrections in ``held``; a class of
    theirs that the model lacks (``horse-new``'s start) gets its channel first, as
    ``finetune`` gives it before measuring (:func:`~pfn_napari.finetune.add_classes`)."""
    from pfn_napari.train import dataset_metrics
    from pfn_napari.train_data import data_classes

    system, cfg, _ = load_checkpoint(weights)
    data = open_dataset(correction_spec(held), "all", None)
    classes, _ = plan_classes(cfg.data.classes, data_classes(data), None)
    cfg = add_classes(system, cfg, classes[len(cfg.data.classes):])
    return dataset_metrics(system, cfg, torch.device("cpu"), data)


def run_along(kind: str, args, work: Path) -> list[str]:
    """One fine-tune per N as a user runs it (no ``val``: every 5th photo held back and the
    start kept when those score it higher), stopped and resumed at each of ``args.along``
    steps: the held-back photos' AP^r@0.5, what final.pt holds, and the held-out photos'
    AP^r@0.5 and mIoU of the fine-tuned weights (last.pt) at each stop."""
    weights, held, pool = prepare_kind(kind, args, work)
    start = held_out_metrics(weights, held)
    rows = [f"| {kind} | - | 0 | - | - | {start['APr@0.5']:.1f} | {start['mIoU']:.1f} |"]
    print(rows[0], flush=True)
    for n in args.n:
        folder = work / f"{kind}-n{n}"
        got = save_taught(kind, pool, folder, n)
        out = work / f"{kind}-n{n}-along"
        for i, steps in enumerate(args.along):
            r = finetune(weights, correction_spec(folder), out, 0, resume=i > 0,
                         seed=args.seed, threads=args.threads, max_steps=steps,
                         recipe=args.recipe)
            m = held_out_metrics(out / "last.pt", held)
            back = (f"{r.before['APr@0.5']:.1f} -> {r.after['APr@0.5']:.1f}"
                    if r.before and r.after else "none held back")
            row = (f"| {kind} | {got} | {r.steps} | {back} | "
                   f"{'the start' if r.kept_start else 'fine-tuned'} | "
                   f"{m['APr@0.5']:.1f} | {m['mIoU']:.1f} |")
            print(row, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--n", nargs="+", type=int, default=[1, 5, 10, 20])
    p.add_argument("--minutes", nargs="+", type=float, default=[2.0, 10.0])
    p.add_argument("--eval-limit", type=int, default=30, help="held-out photos per kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-per-minute", type=float, default=0.0,
                   help="train M x this many steps instead of M minutes of wall clock (the "
                        "steps an idle machine makes in a minute: results that do not depend "
                        "on the machine's load; 0: wall clock)")
    p.add_argument("--recipe", default="finetune-cpu", help="the fine-tuning recipe")
    p.add_argument("--along", nargs="+", type=int, default=None, metavar="STEPS",
                   help="instead of the grid: one run per N as a user runs it (photos held "
                        "back from the N), measured at each of these step counts")
    p.add_argument("--work", default=None, help="folder for the sets and runs (default: temp)")
    p.add_argument("--table", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.along:
        header = ["| kind | N photos | steps | held-back AP^r@0.5 start -> now | final.pt | "
                  "held-out AP^r@0.5 | held-out mIoU |", "|---|---|---|---|---|---|---|"]
        run = run_along
    else:
        header = ["| kind | N photos | minutes | steps | AP^r@0.5 before | after | mIoU before "
                  "| after | wall min (with evaluation) |", "|---|---|---|---|---|---|---|---|---|"]
        run = run_kind
    print("\n".join(header), flush=True)
    rows = [row for kind in args.kinds for row in run(kind, args, work)]
    if args.table:
        Path(args.table).write_text("\n".join(header + rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
