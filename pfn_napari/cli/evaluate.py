"""``pfn evaluate``: AP^r at IoU 0.5..0.9, AP^r_vol and mean IoU of predictions on a dataset.

What is evaluated (one of):

  --oracle                 the ground truth itself, each instance scored 1.0 (must give 100
                           everywhere: proves the reader, the matching and the AP code)
  --predictions PRED.json  a COCO results file (as ``pfn predict`` writes; image_id = file stem,
                           or the COCO id for COCO data)

Examples::

  pfn evaluate --oracle --data voc:VOCdevkit/VOC2012 --split val --out runs/oracle
  pfn evaluate --predictions runs/pred/predictions.json --data voc:VOC2012 --out runs/eval
  pfn evaluate --oracle --data synthetic:20@1 --out /tmp/o --ap-style coco --thresholds 0.5,0.75

Prints the paper's Table 1 shape and writes OUT/metrics.json and OUT/metrics.md. The AP rule
(--ap-style): voc = SDS's (the paper's), coco = pycocotools COCOeval, mnc = MNC/FCIS ports;
see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..data import PFNDataset
    from ..structures import Instances, Sample

#: A producer turns image ``index`` of the dataset (and its sample) into the prediction to
#: evaluate: the instances and, optionally, an ``(H, W)`` class map for the mean IoU (``None``:
#: the instances' class map). New ways of predicting (a checkpoint, oracle locations, oracle
#: counts) are new producers; see :func:`make_producer`.
Producer = Callable[[int, "Sample"], "tuple[Instances, np.ndarray | None]"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="AP^r / AP^r_vol / mIoU of predictions on a dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument("--oracle", action="store_true",
                      help="evaluate the ground truth itself (score 1.0): AP^r must be 100")
    what.add_argument("--predictions", metavar="PRED.json",
                      help="COCO results file (image_id, category_id, RLE segmentation, score)")
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


def load_dataset(args: argparse.Namespace) -> "PFNDataset":
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
    return dataset


def oracle_producer() -> Producer:
    """The ground truth as the prediction (``Instances.from_sample``, scores 1.0)."""
    from ..structures import Instances

    def produce(index: int, sample: "Sample") -> "tuple[Instances, None]":
        return Instances.from_sample(sample), None

    return produce


def predictions_producer(path: str, dataset: "PFNDataset") -> Producer:
    """Instances read from a COCO results file (checked against the dataset up front, masks
    decoded image by image)."""
    from ..evaluate import load_coco_results

    results = load_coco_results(path, dataset)

    def produce(index: int, sample: "Sample") -> "tuple[Instances, None]":
        return results.instances(index, tuple(sample.class_map.shape)), None

    return produce


def make_producer(args: argparse.Namespace, dataset: "PFNDataset") -> tuple[str, Producer]:
    """Pick the producer from the options: returns ``(description, producer)``.

    The lead adds ``pfn evaluate CHECKPOINT``, ``--oracle-locations`` and ``--oracle-counts``
    here, each as one more branch returning a :data:`Producer`.
    """
    from ..errors import PFNError

    chosen = [name for name, on in (("--oracle", args.oracle),
                                    ("--predictions", bool(args.predictions))) if on]
    if len(chosen) > 1:
        raise PFNError(f"choose one of {' and '.join(chosen)}")
    if args.oracle:
        return "ground truth (oracle)", oracle_producer()
    if args.predictions:
        return f"predictions {args.predictions}", predictions_producer(args.predictions, dataset)
    raise PFNError("nothing to evaluate: pass --oracle or --predictions PRED.json")


def evaluate_dataset(dataset: "PFNDataset", produce: Producer, thresholds: tuple[float, ...],
                     ap_style: str, desc: str = "evaluate"):
    """Run ``produce`` on every image (tqdm bar) and evaluate; returns ``Metrics``."""
    from tqdm import tqdm

    from ..evaluate import Evaluator

    evaluator = Evaluator(dataset.classes, thresholds, ap_style)
    bar = tqdm(range(len(dataset)), desc=desc, unit="img")
    for index in bar:
        sample = dataset[index]
        instances, semantic = produce(index, sample)
        evaluator.add(sample, instances, semantic)
    return evaluator.result()


def run(args: argparse.Namespace) -> int:
    from ..evaluate import format_table, write_metrics

    thresholds = parse_thresholds(args.thresholds)
    dataset = load_dataset(args)
    what, produce = make_producer(args, dataset)
    metrics = evaluate_dataset(dataset, produce, thresholds, args.ap_style)
    json_path, md_path = write_metrics(metrics, args.out, dataset.classes)
    print(f"{what} on {getattr(dataset, 'name', args.data)} [{args.split}], "
          f"{metrics.num_images} images, {int(metrics.num_gt.sum())} ground-truth and "
          f"{int(metrics.num_pred.sum())} predicted instances, AP style {args.ap_style}:")
    print(format_table(metrics, dataset.classes))
    miou = metrics.miou
    print(f"AP^r_vol {metrics.ap_r_vol:.1f}   mIoU {miou:.1f}   -> {json_path}, {md_path}")
    return 0
