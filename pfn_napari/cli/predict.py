"""``pfn predict CHECKPOINT IMAGES... --out DIR``: instances for every image, as files.

Per image it writes ``ID_instances.png`` (instance ids), ``ID_classes.png`` (VOC palette),
``ID_overlay.png`` and, with ``--arrows``, ``ID_arrows.png``; all images together go to
``predictions.json`` (COCO results format), which ``pfn evaluate --predictions`` reads back,
and ``images.json`` (each image's id, source file and number of instances). An image's ID is
its file stem, unless another input shares the stem: then the folders and suffix that tell
them apart are added (``a/photo.jpg``, ``b/photo.jpg`` -> ``a_photo``, ``b_photo``;
``photo.jpg``, ``photo.png`` -> ``photo_jpg``, ``photo_png``), so nothing is overwritten. A
failure on one image (unreadable, too large, out of memory, ...) is reported and the others
are still written. Photos are turned as their EXIF orientation says (as viewers show them).

An existing ``predictions.json`` in ``--out`` is added to, not replaced: entries of the images
segmented again (the same file keeps its id) are replaced, the others kept. A run in which
every image fails leaves it as it was; two runs into one ``--out`` at the same time are
refused (a lock file). Ctrl-C writes the results of the images finished so far (exit 130);
``--resume`` then skips them."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
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
                   help="override a test-time setting of the sections grouping, crf, imagenet "
                        "or show, e.g. --set grouping.sigma=0.1 or --set show.classes=[]")
    p.add_argument("--resume", action="store_true",
                   help="skip the images --out's images.json lists as done (after Ctrl-C)")
    p.set_defaults(run=run)


#: The files a run writes per image (``ID_KIND.png``): an earlier run's are never read as input.
OUTPUT_KINDS = ("instances", "classes", "overlay", "arrows")
PREDICTIONS = "predictions.json"
#: Which file each image id of ``predictions.json`` came from (see :func:`write_results`).
IMAGES = "images.json"
LOCK = ".pfn-predict.lock"
_OUTPUT_NAME = re.compile(rf"^.+_({'|'.join(OUTPUT_KINDS)})\.png$", re.IGNORECASE)


def collect_images(items: list[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a de-duplicated list of images (folders and
    patterns sorted).

    From folders and patterns, only regular image files are taken: hidden files, links that go
    nowhere or in circles, and the outputs of an earlier ``pfn predict`` (``ID_instances.png``
    ... in a folder holding its ``predictions.json`` or lock) are left out; ``**`` does not
    follow links to folders. A file named on the command line is taken as it is.
    """
    from ..errors import PFNError

    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if _is_input(p))
            if not files:
                raise PFNError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += files
        elif path.is_file():
            found.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(p for p in _glob(path) if _is_input(p))
            if not matches:
                raise PFNError(f"{item}: pattern matches no images")
            found += matches
        elif path.is_symlink():
            raise PFNError(f"{path}: a link that leads nowhere (or in a circle); pass the file "
                           "it should point to")
        else:
            raise PFNError(f"{path}: no such file or folder")
    seen: set[str] = set()
    return [p for p in found if not (_real(p) in seen or seen.add(_real(p)))]


def _real(path: Path) -> str:
    """The canonical path of ``path`` (links followed; never raises on a loop)."""
    return os.path.realpath(path)


def _glob(pattern: Path) -> list[Path]:
    """``pattern``'s matches, with ``**`` not following links to folders (``glob.glob`` does,
    and two links in a circle make it run for ever)."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = Path(*parts[:first]) if first else Path(".")
    try:
        return list(base.glob(str(Path(*parts[first:])))) if base.is_dir() else []
    except (OSError, ValueError):
        return []


def _is_input(path: Path) -> bool:
    """A regular image file of a folder listing: not hidden, not a dangling or circular link,
    not an output of an earlier ``pfn predict`` into that folder."""
    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        if not path.is_file():  # a folder, a fifo, a link to nothing or in a circle
            return False
    except OSError:
        return False
    return not (_OUTPUT_NAME.match(path.name) and _holds_a_run(path.parent))


def _holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (PREDICTIONS, IMAGES, LOCK))


def image_ids(images: list[Path], reserved: Iterable[str] = (),
              known: dict[str, str] | None = None) -> list[str]:
    """A unique id for each image: it names the image's output files and its entries in
    ``predictions.json``. Ids are compared case-insensitively (file systems that ignore case).

    An image listed in ``known`` (canonical path -> id, an earlier run's ``images.json``) keeps
    its id. Any other takes its stem when no other input shares it; stems shared by several
    inputs get the folders that tell them apart (``a/photo.jpg``, ``b/photo.jpg`` -> ``a_photo``,
    ``b_photo``) and, in one folder, the suffix (``photo.jpg``, ``photo.png`` -> ``photo_jpg``,
    ``photo_png``). A name still taken (by another input or one of ``reserved``) gets ``_2``,
    ``_3``... in input order.
    """
    known = known or {}
    groups: dict[str, list[Path]] = {}
    for path in images:
        groups.setdefault(path.stem.casefold(), []).append(path)
    ids: list[str | None] = [known.get(_real(p)) for p in images]
    used = {r.casefold() for r in reserved} | {i.casefold() for i in ids if i}
    for k, path in enumerate(images):
        if ids[k] is not None:
            continue
        base = name = _distinct_name(path, groups[path.stem.casefold()])
        n = 2
        while name.casefold() in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name.casefold())
        ids[k] = name
    return ids  # type: ignore[return-value]


def _distinct_name(path: Path, group: list[Path]) -> str:
    """``path``'s stem, with the folders and suffix that tell it from the others of ``group``
    (the inputs that share its stem)."""
    if len(group) == 1:
        return path.stem
    parents = [os.path.abspath(p.parent) for p in group]
    common = os.path.commonpath(parents)
    folders = Path(os.path.relpath(os.path.abspath(path.parent), common)).parts
    folders = tuple(f for f in folders if f not in (".", ".."))
    same_folder = parents.count(os.path.abspath(path.parent)) > 1
    suffix = (path.suffix[1:],) if same_folder and path.suffix else ()
    return "_".join((*folders, path.stem, *suffix))


def lock_output(out: Path):
    """Hold an exclusive lock on ``out`` for this run (released when the process ends, even
    when killed); a second ``pfn predict`` into the same folder is refused. Returns the open
    lock file (keep it open), or ``None`` where file locks are not available."""
    from ..errors import OutputError
    from ..output import FolderBusy, lock_file

    try:
        return lock_file(out / LOCK)
    except FolderBusy:
        raise OutputError(f"--out {out}: another `pfn predict` is writing to this folder (lock "
                          f"{out / LOCK}); wait for it to finish or pass another --out") from None


def read_previous(out: Path, name: str = PREDICTIONS) -> list[dict]:
    """The entries of an existing ``out/NAME`` (``predictions.json`` or ``images.json``; kept
    for the images this run does not segment); a file that is not a list of entries with an
    ``image_id`` (and, in ``images.json``, a ``file``) is refused before any work."""
    from ..errors import OutputError

    path = out / name
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        data = exc
    keys = ("image_id", "file") if name == IMAGES else ("image_id",)
    if not (isinstance(data, list) and all(isinstance(e, dict) and all(k in e for k in keys)
                                           and isinstance(e.get("file", ""), str) for e in data)):
        what = "predictions" if name == PREDICTIONS else "images"
        raise OutputError(f"{path}: exists but is not a {what} list this run can add to; move "
                          "it away or pass another --out")
    return data


def earlier_ids(mapping: list[dict]) -> tuple[dict[str, str], set[str]]:
    """From an earlier run's ``images.json``: canonical path -> id of its images, and the ids
    whose file still exists (no other image may take them; a file gone, e.g. moved, frees its
    id)."""
    known = {str(e["file"]): str(e["image_id"]) for e in mapping}
    reserved = {str(e["image_id"]) for e in mapping if os.path.isfile(str(e["file"]))}
    return known, reserved


def write_results(out: Path, previous: list[dict], mapping: list[dict], results: list[dict],
                  done: list[dict]) -> list[dict]:
    """Write ``predictions.json`` (``previous`` entries of the images not in ``done``, then
    ``results``) and ``images.json`` (``mapping`` likewise, then ``done``: one
    ``{"image_id", "file", "instances"}`` per image of this run), each atomically. Returns the
    kept entries of ``previous``."""
    from ..output import atomic_write_text

    ids = {e["image_id"] for e in done}
    files = {e["file"] for e in done}
    kept = [e for e in previous if str(e["image_id"]) not in ids]
    kept_map = [e for e in mapping if str(e["image_id"]) not in ids and e["file"] not in files]
    atomic_write_text(out / PREDICTIONS, json.dumps(kept + results))
    atomic_write_text(out / IMAGES, json.dumps(kept_map + done, indent=1))
    return kept


def check_no_input_overwritten(images: list[Path], ids: list[str], out: Path) -> None:
    """Refuse (:class:`OutputError`) a run whose output files would replace one of its inputs
    (``--out`` the input folder and a photo named like ``a_overlay.png`` beside ``a.png``)."""
    from ..errors import OutputError

    inputs = {_real(p): p for p in images}
    for image_id in ids:
        for kind in OUTPUT_KINDS:
            target = inputs.get(_real(out / f"{image_id}_{kind}.png"))
            if target is not None:
                raise OutputError(f"--out {out}: the output {image_id}_{kind}.png would replace "
                                  f"the input {target}; pass another --out")


def load_predictor(args: argparse.Namespace):
    """The :class:`Predictor` of ``args`` (checkpoint, device, CRF, grouping, ``--set``),
    refused before any image when it cannot segment instances; ``PFN_MAX_SIDE`` checked. The
    test-time settings go to the predictor; the loaded model's config stays as stored."""
    from dataclasses import replace

    from ..errors import CheckpointError
    from ..inference import configured_max_side
    from ..predictor import Predictor
    from .settings import test_time_config

    configured_max_side()
    predictor = Predictor(args.checkpoint, args.device)
    if not predictor.has_instances:
        raise CheckpointError(f"{predictor.model.path}: this checkpoint holds only the category "
                              "network (stage 1); pfn predict needs a stage-2 (instance) or "
                              "unified checkpoint")
    cfg = test_time_config(predictor.model.config, args.overrides, "pfn predict")
    predictor.grouping = replace(cfg.grouping, method=args.grouping) if args.grouping \
        else cfg.grouping
    predictor.imagenet = cfg.imagenet  # --set imagenet.enabled=false switches the step off
    predictor.show = cfg.show  # --set show.classes=[] shows every class
    predictor.crf = cfg.crf if args.crf is None else replace(cfg.crf, enabled=args.crf)
    return predictor


def run(args: argparse.Namespace) -> int:
    from ..output import check_output_dir, remove_stale_temporaries

    images = collect_images(args.images)
    predictor = load_predictor(args)
    out = check_output_dir(args.out)
    lock = lock_output(out)  # noqa: F841 - held until the process ends
    remove_stale_temporaries(out)
    previous, mapping = read_previous(out), read_previous(out, IMAGES)
    known, reserved = earlier_ids(mapping)
    ids = image_ids(images, reserved, known)
    check_no_input_overwritten(images, ids, out)
    skipped = 0
    if args.resume:
        todo = [k for k, (p, i) in enumerate(zip(images, ids))
                if not (_real(p) in known and (out / f"{i}_instances.png").is_file())]
        skipped = len(images) - len(todo)
        images, ids = [images[k] for k in todo], [ids[k] for k in todo]
        print(f"--resume: {skipped} image(s) already in {out / IMAGES} skipped, "
              f"{len(images)} to segment")
        if not images:
            return 0
    run_ = segment(predictor, images, ids, out, args.arrows)
    if not run_.done:
        kept = f"; the existing {out / PREDICTIONS} is left as it was" if previous else ""
        what = ("interrupted before any image was finished" if run_.interrupted else
                f"none of the {len(images)} images could be segmented")
        print(f"pfn: {what}; no {PREDICTIONS} written{kept}", file=sys.stderr)
        return 130 if run_.interrupted else 1
    kept = write_results(out, previous, mapping, run_.results, run_.done)
    if run_.interrupted:
        print(f"pfn: interrupted after {len(run_.done)} of {len(images)} images; their results "
              f"are in {out / PREDICTIONS} and {out / IMAGES}; run the same command with "
              "--resume to segment the rest", file=sys.stderr)
        return 130
    report(run_, predictor, images, out, args.arrows, kept)
    if run_.failures:
        print(f"pfn: {len(run_.failures)} image(s) failed; see the messages above", file=sys.stderr)
        return 1
    return 0


@dataclass
class PredictRun:
    """What :func:`segment` did: COCO results, one ``images.json`` entry per image written,
    the failures' messages, whether Ctrl-C stopped it, and the seconds it took."""

    results: list[dict] = field(default_factory=list)
    done: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


def segment(predictor, images: list[Path], ids: list[str], out: Path,
            arrows: bool) -> PredictRun:
    """Segment ``images`` and write each one's PNGs named by its id; a failure on one image is
    reported and the others go on; Ctrl-C stops after the images finished so far."""
    import time

    from tqdm import tqdm

    run_ = PredictRun()
    bar = tqdm(total=len(images), desc="predict", unit="img")
    start = time.perf_counter()
    try:
        for item in predictor.predict_files(images, image_ids=ids):
            bar.update(1)
            rate = bar.n / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:.2f} img/s, {item.path.name[-30:]}")
            message = item.error or write_image(predictor, item, out, arrows, run_)
            if message:
                run_.failures.append(message)
                tqdm.write(f"pfn: skipped: {message}", file=sys.stderr)
            item = None  # free this image before reading the next
    except KeyboardInterrupt:
        run_.interrupted = True
    bar.close()
    run_.seconds = time.perf_counter() - start
    return run_


def write_image(predictor, item, out: Path, arrows: bool, run_: PredictRun) -> str | None:
    """Write one image's PNGs and add its entries to ``run_``; the failure's message, if any."""
    from ..errors import PFNError
    from ..evaluate import instances_to_coco_results
    from ..visualize import save_label_png, save_overlay

    model, path, inst = predictor.model, item.path, item.instances
    stem = str(inst.image_id)
    try:
        save_label_png(out / f"{stem}_instances.png", inst.label_map())
        save_label_png(out / f"{stem}_classes.png", inst.class_map(), palette=True)
        save_overlay(out / f"{stem}_overlay.png", item.image, inst, model.class_names,
                     title=f"{path.name}: {len(inst)} instance{'' if len(inst) == 1 else 's'}")
        if arrows:  # the generator has not moved on: the predictor holds this image
            predictor.save_arrows(out / f"{stem}_arrows.png", inst)
    except Exception as exc:  # noqa: BLE001 - any failure on one image: report, go on
        return str(exc) if isinstance(exc, PFNError) else f"{path}: {type(exc).__name__}: {exc}"
    category_ids = list(range(1, model.num_classes + 1))
    run_.results += instances_to_coco_results([inst], category_ids, model.class_names)
    run_.done.append({"image_id": stem, "file": _real(path), "instances": len(inst)})
    return None


def report(run_: PredictRun, predictor, images: list[Path], out: Path, arrows: bool,
           kept: list[dict]) -> None:
    """The two summary lines of a finished run."""
    merged = (f"; kept {len(kept)} entries of {len({str(e['image_id']) for e in kept})} other "
              f"image(s) already in {PREDICTIONS}" if kept else "")
    renamed = sum(e["image_id"] != Path(e["file"]).stem for e in run_.done)
    named = (f"; {renamed} image(s) named other than their file's stem (another input shares "
             f"it): see {IMAGES}" if renamed else "")
    print(f"wrote {len(run_.done)} of {len(images)} images ({len(run_.results)} instances) to "
          f"{out}/ ({PREDICTIONS}, {IMAGES}, *_instances.png, *_classes.png, *_overlay.png"
          f"{', *_arrows.png' if arrows else ''}){merged}{named}")
    t, seconds = predictor.times, run_.seconds
    print(f"{len(images) / max(seconds, 1e-9):.2f} images/s in all ({seconds:.1f} s); per image: "
          f"networks {t.network_per_image:.3f} s, grouping {t.grouping_per_image:.3f} s")
