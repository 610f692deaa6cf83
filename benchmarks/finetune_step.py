"""Where a fine-tuning step's time goes: seconds per step of ``pfn finetune`` for recipes that
train more or less of the model, on the same photos, in one process.

    python benchmarks/finetune_step.py --steps 20 --threads 2

Each row fine-tunes the shipped weights for ``--steps`` steps on the first photos of the
Penn-Fudan train split (their true masks as corrections) and reads the step times of its
``log.csv`` (the first step, which warms the caches, left out). The ratio is against the first
row, the recipe that trains every network (the one shipped before this study). Run it on an
idle machine: the seconds are wall clock.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_loop import save_photos  # noqa: E402

from pfn_napari.config import resolve_config_path  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec  # noqa: E402
from pfn_napari.finetune import finetune  # noqa: E402
from pfn_napari.inference import default_weights_path  # noqa: E402

#: the shipped recipe's own frozen layers (stem and first three stages of each backbone)
EARLY = ["backbone._conv_stem", "backbone._bn0", "backbone._blocks.0.", "backbone._blocks.1.",
         "backbone._blocks.2."]
INSTANCE = ["instance."]

#: row name -> changes to the shipped recipe (finetune-cpu)
VARIANTS = {
    "every network (category + locations + counts), crop 193": {"train": {"frozen": EARLY}},
    "the category network alone (instance network not run), crop 193 (shipped)": {},
    "the category network alone, crop 257": {"data": {"crop_size": 257}},
    "the category network alone, crop 129": {"data": {"crop_size": 129}},
    "the category network alone, first five stages frozen, crop 193": {
        "train": {"frozen": EARLY + ["backbone._blocks.3.", "backbone._blocks.4."] + INSTANCE}},
    "the category network alone, crop 193, bfloat16 (`amp: true`)": {"train": {"amp": True}},
    "the category network alone, crop 193, channels-last (`channels_last: true`)": {
        "train": {"channels_last": True}},
}


def recipe_file(changes: dict, folder: Path, name: str) -> Path:
    values = yaml.safe_load(resolve_config_path("finetune-cpu").read_text())
    for section, fields in changes.items():
        values[section].update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--photos", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="finetune-step-"))
    root = args.data_root
    spec = f"folder:{root}/pennfudan/PNGImages:{root}/pennfudan/PedMasks:person"
    save_photos(open_dataset(spec, "train", ["person"]), "person", work / "set", args.photos)
    print(f"{args.photos} Penn-Fudan photos, {args.steps} steps per row, "
          f"{args.threads} threads\n")
    print("| recipe | s / step | ratio |\n|---|---:|---:|")
    base = None
    for i, (name, changes) in enumerate(VARIANTS.items()):
        recipe = recipe_file(changes, work, f"r{i}")
        finetune(default_weights_path(), correction_spec(work / "set"), work / f"run{i}", 0,
                 max_steps=args.steps, recipe=recipe, seed=0)
        elapsed = np.loadtxt(work / f"run{i}" / "log.csv", delimiter=",", skiprows=1,
                             usecols=1)  # (steps,) seconds at the end of each step
        per_step = float(np.diff(elapsed).mean())
        base = base or per_step
        print(f"| {name} | {per_step:.2f} | {per_step / base:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
