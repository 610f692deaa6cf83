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
    import time
    from dataclasses import replace

    from tqdm import tqdm

    from ..config import apply_overrides, config_from_dict, config_to_dict
    from ..errors import PFNError
    from ..evaluate import instances_to_coco_results
    from ..output import atomic_write_text, check_output_dir, remove_stale_temporaries
    from ..predictor import Predictor
    from ..visualize import save_label_png, save_overlay

    images = collect_images(args.images)
    out = check_output_dir(args.out)
    lock = lock_output(out)  # noqa: F841 - held until the process ends
    remove_stale_temporaries(out)
    previous = read_previous(out)
    predictor = Predictor(args.checkpoint, args.device, crf=args.crf)
    model = predictor.model
    cfg = model.config
    if args.overrides:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), args.overrides))
        cfg.validate()
    predictor.grouping = replace(cfg.grouping, method=args.grouping) if args.grouping \
        else cfg.grouping
    model.config = replace(model.config, crf=cfg.crf)  # --set crf.KEY=VALUE reaches the CRF
    results: list[dict] = []
    done_ids: set[str] = set()
    failures: list[str] = []
    category_ids = list(range(1, model.num_classes + 1))
    bar = tqdm(total=len(images), desc="predict", unit="img")
    start = time.perf_counter()
    for item in predictor.predict_files(images):
        path, inst = item.path, item.instances
        bar.update(1)
        rate = bar.n / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{rate:.2f} img/s, {path.name[-30:]}")
        if item.error is not None:
            failures.append(item.error)
            tqdm.write(f"pfn: skipped: {item.error}", file=sys.stderr)
            continue
        try:
            save_label_png(out / f"{path.stem}_instances.png", inst.label_map())
            save_label_png(out / f"{path.stem}_classes.png", inst.class_map(), palette=True)
            save_overlay(out / f"{path.stem}_overlay.png", item.image, inst, model.class_names,
                         title=f"{path.name}: {len(inst)} instance{'' if len(inst) == 1 else 's'}")
            if args.arrows:  # the generator has not moved on: the predictor holds this image
                predictor.save_arrows(out / f"{path.stem}_arrows.png", inst)
            results += instances_to_coco_results([inst], category_ids)
            done_ids.add(path.stem)
        except Exception as exc:  # noqa: BLE001 - any failure on one image: report, go on
            message = str(exc) if isinstance(exc, PFNError) else \
                f"{path}: {type(exc).__name__}: {exc}"
            failures.append(message)
            tqdm.write(f"pfn: skipped: {message}", file=sys.stderr)
        finally:
            item = inst = None  # free this image before reading the next
    bar.close()
    seconds = time.perf_counter() - start
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
    t = predictor.times
    print(f"wrote {done} of {len(images)} images ({len(results)} instances) to {out}/ "
          f"({PREDICTIONS}, *_instances.png, *_classes.png, *_overlay.png"
          f"{', *_arrows.png' if args.arrows else ''}){merged}")
    print(f"{len(images) / max(seconds, 1e-9):.2f} images/s in all ({seconds:.1f} s); per image: "
          f"networks {t.network_per_image:.3f} s, grouping {t.grouping_per_image:.3f} s")
    if failures:
        print(f"pfn: {len(failures)} image(s) failed; see the messages above", file=sys.stderr)
        return 1
    return 0
