"""``pfn predict CHECKPOINT IMAGES... --out DIR``: instances for every image, as files.

Per image it writes ``STEM_instances.png`` (instance ids), ``STEM_classes.png`` (VOC palette),
``STEM_overlay.png`` and, with ``--arrows``, ``STEM_arrows.png``; all images together go to
``predictions.json`` (COCO results format, ``image_id`` = file stem), which
``pfn evaluate --predictions`` reads back. A failure on one image is reported and the others
are still written.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a PFN checkpoint or weights file ('default': the shipped weights)")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arrows", action="store_true", help="also draw each pixel's arrow to its instance center")
    p.add_argument("--grouping", default=None, help="grouping method (spectral or a fast method)")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="refine the category map with the dense CRF, or not (default: the "
                        "checkpoint's crf.enabled, on in the paper recipes)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="grouping.KEY=VALUE",
                   help="override a test-time setting, e.g. --set grouping.sigma=0.1")
    p.set_defaults(run=run)


def collect_images(items: list[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of images."""
    from ..errors import PFNError

    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise PFNError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += files
        elif path.is_file():
            found.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True)
                             if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise PFNError(f"{item}: pattern matches no images")
            found += matches
        else:
            raise PFNError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def read_image(path: Path):
    """Read an image file as (H, W, 3) uint8 RGB; a clear error for anything unreadable."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from ..errors import PFNError
    from ..inference import as_rgb_uint8

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.uint16)
            else:
                arr = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise PFNError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PFNError(f"{path}: unreadable or truncated image ({exc})") from None
    return as_rgb_uint8(arr, str(path))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from ..config import apply_overrides, config_from_dict, config_to_dict, validate
    from ..errors import PFNError
    from ..evaluate import instances_to_coco_results
    from ..grouping import group
    from ..inference import fit_image, load_model, resize_instances, run_network
    from ..visualize import save_arrows, save_label_png, save_overlay

    images = collect_images(args.images)
    model = load_model(None if args.checkpoint == "default" else args.checkpoint, args.device)
    cfg = model.config
    if args.overrides:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), args.overrides))
        validate(cfg)
    gcfg = replace(cfg.grouping, method=args.grouping) if args.grouping else cfg.grouping
    model.config = replace(model.config, crf=cfg.crf)  # --set crf.KEY=VALUE reaches the CRF
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    failures: list[str] = []
    category_ids = list(range(1, model.num_classes + 1))
    bar = tqdm(images, desc="predict", unit="img")
    for path in bar:
        bar.set_postfix_str(path.name[-30:])
        try:
            image = read_image(path)
            net = run_network(model, image, crf=args.crf, name=str(path))
            inst = resize_instances(group(net, gcfg), image.shape[:2])
            inst.image_id = path.stem
            save_label_png(out / f"{path.stem}_instances.png", inst.label_map())
            save_label_png(out / f"{path.stem}_classes.png", inst.class_map(), palette=True)
            save_overlay(out / f"{path.stem}_overlay.png", image, inst, model.class_names,
                         title=f"{path.name}: {len(inst)} instances")
            if args.arrows:
                small, _ = fit_image(image)
                save_arrows(out / f"{path.stem}_arrows.png", small, net,
                            resize_instances(inst, net.image_size))
            results += instances_to_coco_results([inst], category_ids)
        except PFNError as exc:
            failures.append(str(exc))
            tqdm.write(f"pfn: skipped {path}: {exc}", file=sys.stderr)
    tmp = out / ".predictions.json.tmp"
    tmp.write_text(json.dumps(results))
    os.replace(tmp, out / "predictions.json")
    done = len(images) - len(failures)
    print(f"wrote {done} of {len(images)} images ({len(results)} instances) to {out}/ "
          f"(predictions.json, *_instances.png, *_classes.png, *_overlay.png"
          f"{', *_arrows.png' if args.arrows else ''})")
    if failures:
        print(f"pfn: {len(failures)} image(s) failed; see the messages above", file=sys.stderr)
        return 1
    return 0
