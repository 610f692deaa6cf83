"""What a training step costs on this CPU: images per second of ``pfn train`` for the two
stages of the ``cpu-demo`` recipe, as it is (float32, PyTorch's memory order), in channels-last
memory order (``train.channels_last``), in mixed precision (``train.amp``: bfloat16 autocast)
and with both, in one process.

    python benchmarks/train_step.py --steps 40 --threads 2 [--init CATEGORY.pt]

Each row trains ``--steps`` steps of the recipe (batch 4, 257-pixel crops, its frozen layers)
on its real training data (``../shared/data``; the synthetic shapes without it) and reads the
images per second of its ``log.csv`` (the first ``--skip`` steps, which warm the caches and
the loader, left out). The stage-2 rows start from ``--init`` (a stage-1 checkpoint; without
one the category network is the untrained one, which costs the same). The ratio is the first
row's seconds per step over each row's, per stage. Run it on an idle machine: the rates are
wall clock. On a CPU without native bfloat16 (AVX512-BF16 or AMX) ``train.amp`` is ignored
and the header says so.

``--maskrcnn SECONDS`` adds the peer of docs/RESULTS.md (``benchmarks/maskrcnn_peer.py``,
torchvision's Mask R-CNN on Lite0 + FPN, batch 2) in both memory orders, each trained for
SECONDS of wall clock on the same data; its seconds per step include its warm-up steps.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.config import load_config  # noqa: E402
from pfn_napari.demo import demo_train_spec, find_shared_data  # noqa: E402
from pfn_napari.train import cpu_has_bfloat16, train  # noqa: E402


#: row name -> the settings it adds to the recipe
VARIANTS = {
    "the recipe (float32)": [],
    "channels-last (`train.channels_last`)": ["train.channels_last=true"],
    "bfloat16 (`train.amp`)": ["train.amp=true"],
    "both": ["train.channels_last=true", "train.amp=true"],
}


def images_per_second(log: Path, skip: int) -> float:
    """Mean of the ``images_per_s`` column over the logged steps after the first ``skip``."""
    with log.open(newline="") as fh:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(fh) if int(r["step"]) > skip]
    if not rates:
        raise SystemExit(f"{log}: no logged step after step {skip}; raise --steps")
    return sum(rates) / len(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", default="", help="a stage-1 checkpoint for the stage-2 rows")
    p.add_argument("--maskrcnn", type=float, default=0, metavar="SECONDS",
                   help="also time Mask R-CNN (both memory orders) for SECONDS each")
    p.add_argument("--no-pfn", action="store_true", help="leave out PFN's rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = find_shared_data()
    spec = demo_train_spec(root, 300) if root is not None else "synthetic:300"
    work = Path(tempfile.mkdtemp(prefix="train-step-"))
    native = cpu_has_bfloat16()
    print(f"cpu-demo recipe, {args.steps} steps per row (first {args.skip} left out), "
          f"{args.threads} threads, data {'../shared/data' if root else 'synthetic'}; "
          f"native bfloat16: {'yes' if native else 'no (train.amp is ignored)'}\n")
    print("| stage | setting | images / s | s / step | first row / this |\n"
          "|---|---|---:|---:|---:|")
    for stage in () if args.no_pfn else ("category", "instance"):
        base = None
        for i, (name, settings) in enumerate(VARIANTS.items()):
            out = work / f"{stage}-{i}"
            cfg = load_config("cpu-demo", [
                f"train.stage={stage}", f"data.train={spec}", "data.val=synthetic:2@1",
                f"train.out_dir={out}", "train.device=cpu", f"train.max_steps={args.steps}",
                "train.log_every=1", "train.checkpoint_every=0", *settings,
                *([f"train.init={args.init}"] if stage == "instance" and args.init else [])])
            train(cfg, progress=False)
            rate = images_per_second(out / "log.csv", args.skip)
            per_step = cfg.train.batch_size / rate
            base = base or per_step
            print(f"| {stage} | {name} | {rate:.2f} | {per_step:.3f} | {base / per_step:.2f} |",
                  flush=True)
    if args.maskrcnn > 0:
        maskrcnn_rows(spec, args.maskrcnn)
    return 0


def maskrcnn_rows(spec: str, seconds: float) -> None:
    """The peer's rows: default and channels-last order, ``seconds`` of training each."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from maskrcnn_peer import build_maskrcnn, train_maskrcnn

    from pfn_napari.data import open_dataset
    from pfn_napari.demo import DEMO_CLASSES

    data = open_dataset(spec, "train", DEMO_CLASSES)
    samples = [data[i] for i in range(len(data))]
    base = None
    for name, order in (("Mask R-CNN (float32)", False), ("Mask R-CNN, channels-last", True)):
        torch.manual_seed(0)
        model = build_maskrcnn(len(DEMO_CLASSES))
        stats = train_maskrcnn(model, samples, seconds, channels_last=order, log=lambda _: None)
        per_step = stats["seconds"] / max(1, stats["steps"])
        base = base or per_step
        print(f"| Mask R-CNN | {name} | {stats['images'] / stats['seconds']:.2f} | "
              f"{per_step:.3f} | {base / per_step:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
