"""``pfn predict CHECKPOINT IMAGES... --out DIR``: instances for every image, as files.

Per image it writes ``STEM_instances.png`` (instance ids), ``STEM_classes.png`` (VOC palette),
``STEM_overlay.png`` and, with ``--arrows``, ``STEM_arrows.png``; all images together go to
``predictions.json`` (COCO results format, ``image_id`` = file stem), which
``pfn evaluate --predictions`` reads back. A failure on one image (unreadable, too large,
out of memory, ...) is reported and the others are still written.

An existing ``predictions.json`` in ``--out`` is added to, not replaced: entries of the images
segmented again are replaced, the others kept. A run in which every image fails leaves it as
it was; two runs into one ``--out`` at the same time are refused (a lock file).
"""

from __future__ import annotations

import argparse
import glob
import json
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
            else:  # (no copy of an image already RGB: big images are read once)
                arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except UnidentifiedImageError:
        raise PFNError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as exc:
        raise PFNError(f"{path}: too large to read ({exc}); shrink the image first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PFNError(f"{path}: unreadable or truncated image ({exc})") from None
    return as_rgb_uint8(arr, str(path))


PREDICTIONS = "predictions.json"
LOCK = ".pfn-predict.lock"


def lock_output(out: Path):
    """Hold an exclusive lock on ``out`` for this run (released when the process ends, even
    when killed); a second ``pfn predict`` into the same folder is refused. Returns the open
    lock file (keep it open), or ``None`` where file locks are not available."""
    from ..errors import OutputError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fh = open(out / LOCK, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise OutputError(f"--out {out}: another `pfn predict` is writing to this folder (lock "
                          f"{out / LOCK}); wait for it to finish or pass another --out") from None
    except OSError:  # pragma: no cover - a file system without locks (some NFS): go unlocked
        fh.close()
        return None
    return fh


def read_previous(out: Path) -> list[dict]:
    """The entries of an existing ``out/predictions.json`` (kept for the images this run does
    not segment); a file that is not a list of entries is refused before any work."""
    from ..errors import OutputError

    path = out / PREDICTIONS
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        data = exc
    if not (isinstance(data, list) and all(isinstance(e, dict) and "image_id" in e for e in data)):
        raise OutputError(f"{path}: exists but is not a predictions list this run can add to; "
                          "move it away or pass another --out")
    return data


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from ..config import apply_overrides, config_from_dict, config_to_dict, validate
    from ..errors import PFNError
    from ..evaluate import instances_to_coco_results
    from ..grouping import group
    from ..inference import fit_image, load_model, resize_instances, run_network
    from ..output import atomic_write_text, check_output_dir, remove_stale_temporaries
    from ..visualize import save_arrows, save_label_png, save_overlay

    images = collect_images(args.images)
    out = check_output_dir(args.out)
    lock = lock_output(out)  # noqa: F841 - held until the process ends
    remove_stale_temporaries(out)
    previous = read_previous(out)
    model = load_model(None if args.checkpoint == "default" else args.checkpoint, args.device)
    cfg = model.config
    if args.overrides:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), args.overrides))
        validate(cfg)
    gcfg = replace(cfg.grouping, method=args.grouping) if args.grouping else cfg.grouping
    model.config = replace(model.config, crf=cfg.crf)  # --set crf.KEY=VALUE reaches the CRF
    results: list[dict] = []
    done_ids: set[str] = set()
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
                         title=f"{path.name}: {len(inst)} instance{'' if len(inst) == 1 else 's'}")
            if args.arrows:
                small, _ = fit_image(image)
                save_arrows(out / f"{path.stem}_arrows.png", small, net,
                            resize_instances(inst, net.image_size))
            results += instances_to_coco_results([inst], category_ids)
            done_ids.add(path.stem)
        except Exception as exc:  # noqa: BLE001 - any failure on one image: report, go on
            message = str(exc) if isinstance(exc, PFNError) else \
                f"{path}: {type(exc).__name__}: {exc}"
            failures.append(message)
            tqdm.write(f"pfn: skipped {path}: {message}", file=sys.stderr)
        finally:
            image = net = inst = None  # free this image before reading the next
    done = len(images) - len(failures)
    if done == 0:
        kept = f"; the existing {out / PREDICTIONS} is left as it was" if previous else ""
        print(f"pfn: none of the {len(images)} images could be segmented; no {PREDICTIONS} "
              f"written{kept}", file=sys.stderr)
        return 1
    kept = [e for e in previous if str(e["image_id"]) not in done_ids]
    atomic_write_text(out / PREDICTIONS, json.dumps(kept + results))
    merged = (f"; kept {len(kept)} entries of {len({str(e['image_id']) for e in kept})} other "
              f"image(s) already in {PREDICTIONS}" if kept else "")
    print(f"wrote {done} of {len(images)} images ({len(results)} instances) to {out}/ "
          f"({PREDICTIONS}, *_instances.png, *_classes.png, *_overlay.png"
          f"{', *_arrows.png' if args.arrows else ''}){merged}")
    if failures:
        print(f"pfn: {len(failures)} image(s) failed; see the messages above", file=sys.stderr)
        return 1
    return 0
