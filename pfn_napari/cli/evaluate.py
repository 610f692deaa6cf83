"""``pfn evaluate``: AP^r at IoU 0.5..0.9, AP^r_vol and mean IoU of predictions on a dataset.

What is evaluated (one of):

  --oracle                 the ground truth itself, each instance scored 1.0 (must give 100
                           everywhere: proves the reader, the matching and the AP code)
  --predictions PRED.json  a COCO results file (as ``pfn predict`` writes; image_id = file stem,
                           or the COCO id for COCO data)
  CHECKPOINT               a trained model: networks + test-time grouping, end to end
                           (--oracle-counts: with the ground-truth instance numbers;
                           --oracle-locations: with the ground-truth locations clustered on
                           the model's own segmentation, the paper's "upperbound instloc")
  --oracle-locations       without CHECKPOINT, "perfect networks": ground-truth classes,
                           counts and location vectors (optionally --noise S) grouped by
                           --grouping: the upper bound of the grouping step alone

Examples::

  pfn evaluate --oracle --data voc:VOCdevkit/VOC2012 --split val --out runs/oracle
  pfn evaluate --predictions runs/pred/predictions.json --data voc:VOC2012 --out runs/eval
  pfn evaluate --oracle --data synthetic:20@1 --out /tmp/o --ap-style coco --thresholds 0.5,0.75
  pfn evaluate runs/inst/final.pt --data voc:VOC2012 --split val --out runs/eval --plot-pr
  pfn evaluate --oracle-locations --noise 0.02 --grouping vote --data voc:VOC2012 --out runs/ol
  pfn evaluate runs/inst/final.pt --oracle-locations --data voc:VOC2012 --out runs/instloc

Prints the paper's Table 1 shape, then what a user sees: the objects shown, how many are right
(IoU >= 0.5 with a true object of their class), the precision and the false objects per image;
writes OUT/metrics.json and OUT/metrics.md. The AP rule
(--ap-style): voc = SDS's (the paper's), coco = pycocotools COCOeval, mnc = MNC/FCIS ports;
see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..data import PFNDataset
    from ..producers import Producer

def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="AP^r / AP^r_vol / mIoU of predictions on a dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument("--oracle", action="store_true",
                      help="evaluate the ground truth itself (score 1.0): AP^r must be 100")
    what.add_argument("--predictions", metavar="PRED.json",
                      help="COCO results file (image_id, category_id, RLE segmentation, score)")
    what.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                      help="a trained PFN checkpoint or weights file ('default': the shipped one)")
    what.add_argument("--oracle-locations", action="store_true",
                      help="ground-truth locations: alone, with ground-truth classes and counts "
                           "(perfect networks); with CHECKPOINT, on the model's segmentation "
                           "(the paper's upper bound)")
    oracle = p.add_argument_group("oracle and test-time options")
    oracle.add_argument("--oracle-counts", action="store_true",
                        help="with CHECKPOINT: use the ground-truth instance numbers")
    oracle.add_argument("--noise", type=float, default=0.0, metavar="S",
                        help="--oracle-locations: Gaussian noise (std, normalised units) on the locations")
    oracle.add_argument("--stride", type=int, default=None,
                        help="--oracle-locations without CHECKPOINT: grid stride of the oracle "
                             "maps (default 8 = the network's)")
    oracle.add_argument("--encoding", default=None,
                        help="--oracle-locations without CHECKPOINT: location encoding (default: "
                             "the config's, box6)")
    oracle.add_argument("--grouping", default=None, metavar="NAME",
                        help="grouping method: spectral (the paper's) or a fast one "
                             "(see docs/grouping.md)")
    oracle.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="grouping.KEY=VALUE", help="override a setting, e.g. grouping.sigma=0.1")
    oracle.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                        help="with CHECKPOINT: dense CRF on the class map, or not (default: the "
                             "checkpoint's crf.enabled, on in the paper recipes)")
    oracle.add_argument("--device", default="auto", help="with CHECKPOINT: cpu, cuda or auto")
    oracle.add_argument("--seed", type=int, default=0, help="seed of the oracle noise")
    oracle.add_argument("--grid-classes", action="store_true",
                        help="--oracle-locations without CHECKPOINT: classes known only on the "
                             "grid (as a network without CRF sees them) instead of the "
                             "full-resolution ground truth")
    p.add_argument("--plot-pr", action="store_true",
                   help="also write OUT/pr_curves.png (precision/recall at IoU 0.5 per class)")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="dataset spec, e.g. voc:ROOT, coco:ANN.json:IMAGES, synthetic:40@1")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--classes", default=None, metavar="a,b,...",
                   help="class names 1..C to evaluate (default: the dataset's own)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for metrics.json and metrics.md")
    p.add_argument("--ap-style", default="voc", choices=("voc", "coco", "mnc"),
                   help="matching and AP rule: voc = SDS (default), coco = COCOeval, "
                        "mnc = MNC/FCIS")
    p.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9", metavar="T,T,...",
                   help="IoU thresholds reported as AP^r (AP^r_vol always uses 0.1..0.9)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="evaluate only the first N images (0: all)")
    p.set_defaults(run=run)
    return p


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.5,0.7"`` -> ``(0.5, 0.7)``; a clear error for anything else."""
    from ..errors import PFNError

    try:
        values = tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise PFNError(f"--thresholds {text!r}: expected comma-separated numbers, "
                       "e.g. 0.5,0.7") from None
    if not values or any(not 0.0 <= t < 1.0 for t in values):
        raise PFNError(f"--thresholds {text!r}: each IoU threshold must be in [0, 1)")
    return values


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    from ..errors import PFNError

    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise PFNError(f"--classes {text!r}: expected comma-separated class names, e.g. person,dog")
    return names


def load_dataset(args: argparse.Namespace) -> PFNDataset:
    """The dataset named by ``--data/--split/--classes`` (cut to ``--limit`` images)."""
    from ..data import open_dataset
    from ..errors import PFNError

    dataset = open_dataset(args.data, args.split, parse_classes(args.classes))
    if len(dataset) == 0:
        raise PFNError(f"--data {args.data} --split {args.split}: no images")
    if not dataset.classes:
        raise PFNError(f"--data {args.data}: the dataset names no classes; pass --classes")
    limit = getattr(args, "limit", 0) or 0
    if limit < 0:
        raise PFNError(f"--limit {limit}: must be >= 0")
    if limit and limit < len(dataset):
        dataset = dataset.subset(list(range(limit)))
    if not has_labelled_object(dataset):
        raise PFNError(f"--data {args.data} --split {args.split}: none of its {len(dataset)} "
                       f"images has a labelled object of the classes {list(dataset.classes)}; "
                       "there is nothing to score (check its masks or annotations, or --classes)")
    return dataset


def has_labelled_object(dataset: PFNDataset) -> bool:
    """True when an image of ``dataset`` has a pixel of one of its classes (decoded in order
    until one has; usually the first). Without one every score is computed on the background
    alone (an mIoU of 100)."""
    for i in range(len(dataset)):
        class_map = dataset[i].class_map  # (H, W) uint8: 0 background, 255 void
        if bool(((class_map >= 1) & (class_map <= len(dataset.classes))).any()):
            return True
    return False


def _grouping_config(args: argparse.Namespace, base=None):
    """The settings: the model's (or the defaults), then --grouping and --set (a new config;
    with a model the sections grouping, crf, imagenet and show, without one only grouping)."""
    from dataclasses import replace

    from ..config import PFNConfig
    from .settings import TEST_TIME_SECTIONS, test_time_config

    sections = TEST_TIME_SECTIONS if base is not None else ("grouping",)
    command = "pfn evaluate CHECKPOINT" if base is not None else "pfn evaluate --oracle-locations"
    cfg = test_time_config(base or PFNConfig(), list(getattr(args, "overrides", None) or []),
                           command, sections)
    gcfg = cfg.grouping
    if getattr(args, "grouping", None):
        gcfg = replace(gcfg, method=args.grouping)
    gcfg.validate()
    return cfg, gcfg


def model_producer(args: argparse.Namespace, dataset: PFNDataset) -> Producer:
    """A checkpoint through a :class:`~pfn_napari.predictor.Predictor`; ``--oracle-counts``
    swaps in the true counts, ``--oracle-locations`` the true locations. The test-time
    settings go to the predictor; the loaded model's config stays as stored."""
    from dataclasses import replace

    from ..predictor import Predictor
    from ..producers import model_producer as produce_with

    predictor = Predictor(args.checkpoint, args.device)
    cfg, gcfg = _grouping_config(args, predictor.model.config)
    predictor.crf = cfg.crf if args.crf is None else replace(cfg.crf, enabled=args.crf)
    predictor.grouping = gcfg
    predictor.imagenet = cfg.imagenet  # --set imagenet.KEY=VALUE reaches the ImageNet step
    predictor.show = cfg.show  # --set show.classes=[] shows every class
    return produce_with(predictor, dataset, oracle_counts=args.oracle_counts,
                        oracle_locations=args.oracle_locations, noise=args.noise, seed=args.seed)


def oracle_locations_producer(args: argparse.Namespace, dataset: PFNDataset) -> Producer:
    """Ground-truth classes and location vectors (+ noise) through the grouping."""
    from ..producers import oracle_locations_producer as produce_with

    cfg, gcfg = _grouping_config(args)
    return produce_with(len(dataset.classes), gcfg, args.encoding or cfg.model.encoding,
                        noise=args.noise, seed=args.seed, stride=args.stride or 8,
                        full_classes=not args.grid_classes)


def describe_model_run(args: argparse.Namespace) -> str:
    """What a CHECKPOINT run evaluates, naming the ground truth swapped in."""
    swapped = [what for what, on in (("counts", args.oracle_counts),
                                     ("locations", args.oracle_locations)) if on]
    what = f"model {args.checkpoint}"
    if swapped:
        what += f" with ground-truth {' and '.join(swapped)}"
    if args.oracle_locations:
        what += (f" clustered on its own segmentation (the paper's upper bound 'instloc', "
                 f"noise {args.noise})")
    return what


def make_producer(args: argparse.Namespace, dataset: PFNDataset) -> tuple[str, Producer]:
    """Pick the producer from the options: returns ``(description, producer)``."""
    from ..errors import PFNError
    from ..producers import oracle_producer, predictions_producer

    chosen = [name for name, on in (("--oracle", args.oracle),
                                    ("--predictions", bool(args.predictions)),
                                    ("CHECKPOINT", bool(args.checkpoint)),
                                    ("--oracle-locations", args.oracle_locations
                                     and not args.checkpoint)) if on]
    if len(chosen) > 1:
        raise PFNError(f"choose one of {' and '.join(chosen)}")
    if args.oracle_counts and not args.checkpoint:
        raise PFNError("--oracle-counts needs a CHECKPOINT (it replaces the predicted counts)")
    perfect_only = [f for f, v in (("--stride", args.stride), ("--encoding", args.encoding),
                                   ("--grid-classes", args.grid_classes)) if v]
    if args.checkpoint and perfect_only:
        raise PFNError(f"{', '.join(perfect_only)}: only for --oracle-locations without "
                       "CHECKPOINT (with one, the model's grid and encoding are used)")
    if args.oracle:
        return "ground truth (oracle)", oracle_producer()
    if args.predictions:
        return f"predictions {args.predictions}", predictions_producer(args.predictions, dataset)
    if args.checkpoint:
        return describe_model_run(args), model_producer(args, dataset)
    if args.oracle_locations:
        return (f"perfect networks: ground-truth classes, counts and locations (noise "
                f"{args.noise}, stride {args.stride or 8}, grouping {args.grouping or 'spectral'})",
                oracle_locations_producer(args, dataset))
    raise PFNError("nothing to evaluate: pass CHECKPOINT, --oracle, --oracle-locations or "
                   "--predictions PRED.json")


def check_numbers(args: argparse.Namespace) -> None:
    """Range-check the numeric options (``--limit`` is checked with the data)."""
    import math

    from ..errors import PFNError

    if not (math.isfinite(args.noise) and 0 <= args.noise <= 1):
        raise PFNError(f"--noise {args.noise}: a standard deviation in [0, 1] "
                       "(normalised units: 1 is the whole image)")
    if args.stride is not None and not 1 <= args.stride <= 64:
        raise PFNError(f"--stride {args.stride}: a grid stride from 1 to 64 pixels (8 is the "
                       "network's)")
    if not 0 <= args.seed < 2**32:
        raise PFNError(f"--seed {args.seed}: from 0 to 2^32 - 1")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import format_table, shown_line, write_metrics
    from ..output import check_output_dir
    from ..producers import evaluate_dataset

    check_numbers(args)
    thresholds = parse_thresholds(args.thresholds)
    check_output_dir(args.out)  # before the work, not after it
    dataset = load_dataset(args)
    what, produce = make_producer(args, dataset)
    metrics = evaluate_dataset(dataset, produce, thresholds, args.ap_style)
    print(f"{what} on {getattr(dataset, 'name', args.data)} [{args.split}], "
          f"{metrics.num_images} images, {int(metrics.num_gt.sum())} ground-truth and "
          f"{int(metrics.num_pred.sum())} predicted instances, AP style {args.ap_style}:")
    print(format_table(metrics, dataset.classes))
    miou = metrics.miou
    print(f"AP^r_vol {metrics.ap_r_vol:.1f}   mIoU {miou:.1f}   {shown_line(metrics)}",
          flush=True)
    json_path, md_path = write_metrics(metrics, args.out, dataset.classes)
    print(f"-> {json_path}, {md_path}")
    if args.plot_pr:
        from pathlib import Path

        from ..visualize import plot_pr_curves

        png = plot_pr_curves(metrics.pr_curves(0.5) if 0.5 in metrics.curves else
                             metrics.pr_curves(metrics.thresholds[0]), Path(args.out) / "pr_curves.png",
                             title=f"precision / recall, {what}")
        print(f"precision/recall curves -> {png}")
    return 0
