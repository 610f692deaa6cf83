"""``pfn finetune WEIGHTS --data SPEC --minutes M --out DIR``: teach a trained model your objects.

Examples::

    pfn finetune default --data folder:photos:masks:person --minutes 10 --out runs/mine
    pfn finetune default --data folder:set/images:set/masks --classes person,kayak --minutes 5 --out runs/k
    pfn finetune default --data folder:set/images:set/masks --minutes 10 --out runs/k --resume

WEIGHTS is a checkpoint or weights file (``default``: the shipped model). Both networks and the
count head learn, for M minutes of wall clock (a progress bar; Ctrl-C saves OUT/last.pt, and
``--resume`` continues it exactly). Classes come from the data unless ``--classes`` names
them; a class the model lacks gets a new output channel. Without ``--val`` every 5th image is
held back and measured before and after when that gives at least 3. Outputs: OUT/final.pt
(loads wherever a checkpoint does), OUT/README.md (the card), OUT/last.pt, log.csv,
config.yaml. See docs/finetune.md.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a trained model on your corrected images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", metavar="WEIGHTS", help="checkpoint or weights file, or 'default'")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="the corrected images, e.g. folder:IMAGES:MASKS[:CLASS] (docs/data.md)")
    p.add_argument("--minutes", type=float, default=10.0, metavar="M",
                   help="wall-clock budget of the training steps (default 10)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="the classes the data teaches (default: the data's own); new names "
                        "get new output channels")
    p.add_argument("--val", default=None, metavar="SPEC",
                   help="images to measure before and after (default: every 5th of --data, "
                        "held back, when that gives at least 3)")
    p.add_argument("--split", default="all", help="the split of --data and --val read "
                                                  "(default all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (last.pt)")
    p.add_argument("--recipe", default="finetune-cpu",
                   help="YAML of data/train/loss settings, or a shipped name (finetune-cpu)")
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..finetune import finetune

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    result = finetune(args.weights, args.data, args.out, args.minutes, classes=classes,
                      val=args.val, resume=args.resume, seed=args.seed, split=args.split,
                      recipe=args.recipe, max_steps=args.max_steps, device=args.device,
                      bar=not args.no_progress)
    for name, m in (("before", result.before), ("after", result.after)):
        if m is not None:
            print(f"{name}: AP^r@0.5 {m.get('APr@0.5', float('nan')):.1f}, "
                  f"mIoU {m.get('mIoU', float('nan')):.1f}")
    from ..finetune import KEPT_START_NOTE, measurement_note

    measured = result.before or result.after
    note = measurement_note(measured)
    if note:
        print(f"measured on {measured.get('images', 0)} images with {note}")
    if result.kept_start:
        print(KEPT_START_NOTE)
    new = f" (new: {', '.join(result.new_classes)})" if result.new_classes else ""
    print(f"{result.steps} steps in {result.minutes:.1f} min; taught "
          f"{', '.join(result.taught)}{new}; the model has {len(result.classes)} classes")
    print(result.weights)
    return 0
