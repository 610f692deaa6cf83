"""``pfn demo``: the shipped model on the shipped sample images and the embedded data.

Writes a report folder (``--out``, default ``pfn-demo-report``) with the AP^r table
(``metrics.json``, ``metrics.md``, ``report.md``, ``index.html``), precision/recall and loss
curves, and overlay and arrow pictures; prints where it is. ``--train`` first retrains the CPU
recipe through both stages; ``--quick`` is a one-minute smoke run.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the shipped model end to end and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="pfn-demo-report", help="report folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--train", action="store_true",
                   help="retrain the CPU recipe (both stages) first instead of using the shipped weights")
    p.add_argument("--weights", default=None, help="a checkpoint to use instead of the shipped weights")
    p.add_argument("--grouping", default=None, help="grouping method (default: the model's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    data = run_demo(args.out, quick=args.quick, train=args.train, weights=args.weights,
                    device=args.device, grouping=args.grouping)
    thresholds = ", ".join(f"@{t} {v:.1f}" for t, v in data["ap_r"].items() if v is not None)
    print(f"\nAP^r {thresholds}; AP^r_vol {data['ap_r_vol'] or 0:.1f}; mIoU {data['miou'] or 0:.1f} "
          f"({data['num_images']} images, {data['timing']['total_s']:.0f} s)")
    for name, d in data["datasets"].items():
        print(f"  {name:10s} {d['images']:4d} img  AP^r@0.5 {d['ap_r'].get('0.5') or 0:5.1f}  "
              f"AP^r_vol {d['ap_r_vol'] or 0:5.1f}  mIoU {d['miou'] or 0:5.1f}")
    print(f"report: {args.out}/report.md (open {args.out}/index.html in a browser)")
    return 0
