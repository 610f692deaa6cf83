"""evaluate.py: SDS matching and AP on hand-computed cases, COCOeval agreement, mIoU, files."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from pfn_napari.errors import DatasetError
from pfn_napari.evaluate import (
    VOL_THRESHOLDS,
    Evaluator,
    average_precision,
    evaluate,
    format_table,
    instances_to_coco_results,
    mask_ious,
    match_image,
    read_coco_results,
    right_objects,
    write_metrics,
)
from pfn_napari.structures import Instances, Sample


def make_sample(masks: list[np.ndarray], classes: list[int], void: np.ndarray | None = None,
                image_id: str | int = "img") -> Sample:
    """A sample from (H, W) bool instance masks; void pixels are 255 in both maps."""
    h, w = masks[0].shape if masks else void.shape
    inst = np.zeros((h, w), np.int32)
    cls = np.zeros((h, w), np.uint8)
    for k, (m, c) in enumerate(zip(masks, classes), start=1):
        inst[m] = k
        cls[m] = c
    if void is not None:
        inst[void] = 255
        cls[void] = 255
    return Sample(np.zeros((h, w, 3), np.uint8), cls, inst, np.array(classes, np.int64), image_id)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def preds(masks: list[np.ndarray], classes: list[int], scores: list[float],
          image_id: str | int = "img") -> Instances:
    return Instances(np.array(masks, bool).reshape(len(masks), *masks[0].shape) if masks
                     else np.zeros((0, 4, 4), bool), classes, scores, image_id)


# ----------------------------------------------------------------------------- matching rules

def test_iou_exactly_at_threshold_is_not_a_true_positive_under_voc():
    gt = make_sample([box(4, 4, 0, 2, 0, 2)], [1])  # 4 pixels
    pred = preds([box(4, 4, 0, 1, 0, 2)], [1], [0.9])  # 2 of them: IoU 2/4 = 0.5 exactly
    assert mask_ious(pred.masks, gt.instance_masks())[0, 0] == 0.5
    voc = evaluate([gt], [pred], ["a"], thresholds=[0.5])
    assert voc.ap_r == {"0.5": 0.0}  # strictly greater: IoU 0.5 is a false positive
    assert voc.mean_ap(0.4) == 1.0
    for style in ("coco", "mnc"):  # these use >=
        assert evaluate([gt], [pred], ["a"], thresholds=[0.5], ap_style=style).ap_r["0.5"] == \
            pytest.approx(100.0)


def test_match_rules_on_iou_tables():
    # two ground-truth instances; A (0.9) overlaps G1 0.8 / G2 0.6; B (0.8) overlaps 0.7 / 0.55
    ious = np.array([[0.8, 0.6], [0.7, 0.55]])
    scores = np.array([0.9, 0.8])
    assert match_image(scores, ious, 0.5, "voc").tolist() == [True, True]  # B takes G2
    assert match_image(scores, ious, 0.5, "coco").tolist() == [True, True]
    assert match_image(scores, ious, 0.5, "mnc").tolist() == [True, False]  # B hits used G1
    # B ranked first takes G1 and A falls back to G2
    assert match_image(np.array([0.5, 0.8]), ious, 0.5, "voc").tolist() == [True, True]
    assert match_image(np.array([0.5, 0.8]), ious, 0.65, "voc").tolist() == [False, True]
    # no ground truth: every prediction is a false positive
    assert match_image(scores, np.zeros((2, 0)), 0.5, "voc").tolist() == [False, False]


def test_voc_duplicates_are_false_positives():
    g = box(6, 6, 0, 4, 0, 4)  # 16 px
    gt = make_sample([g], [1])
    a = box(6, 6, 0, 4, 0, 3) | box(6, 6, 4, 5, 0, 3)  # 12 in, 3 out: IoU 12/19 = 0.63
    b = g.copy()  # IoU 1
    pred = preds([a, b], [1, 1], [0.9, 0.8])
    m = evaluate([gt], [pred], ["a"], thresholds=[0.5, 0.7])
    # 0.5: A is TP, B a duplicate (FP) after it: precision 1 at recall 1 -> AP 1
    # 0.7: A is FP, B TP: precision 1/2 at recall 1 -> AP 0.5
    assert m.ap_r == {"0.5": 100.0, "0.7": 50.0}
    rec, prec = m.curves[0.5][0]
    np.testing.assert_allclose(rec, [1, 1])
    np.testing.assert_allclose(prec, [1, 0.5])


def test_average_precision_by_hand():
    scores = np.array([0.6, 0.9, 0.7, 0.8])  # ranked: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP
    tp = np.array([False, True, True, False])
    ap, rec, prec = average_precision(scores, tp, 3, "voc")
    np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 1 / 2])
    assert ap == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))  # 5/9, all-points envelope
    assert average_precision(scores, tp, 3, "mnc")[0] == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)
    assert average_precision(scores, tp, 3, "coco")[0] == pytest.approx((34 + 33 * 2 / 3) / 101)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 2, "voc")[0] == 0.0
    assert math.isnan(average_precision(scores, tp, 0, "voc")[0])


def test_ties_keep_dataset_order():
    """Equal scores: a stable sort, so the earlier prediction (dataset order) ranks first."""
    ap_first_tp = average_precision(np.array([0.5, 0.5]), np.array([True, False]), 1)[0]
    ap_first_fp = average_precision(np.array([0.5, 0.5]), np.array([False, True]), 1)[0]
    assert (ap_first_tp, ap_first_fp) == (1.0, 0.5)


#: 20 predictions, scores 0.9 (even index) and 0.5 (odd): numpy sorts up to 16 elements
#: stably whatever ``kind``; beyond that only a stable sort keeps ties in dataset order.
TIED_SCORES = np.tile([0.9, 0.5], 10)


def test_many_tied_scores_keep_dataset_order():
    """The documented tie rule with more than 16 predictions: equal scores rank in dataset
    order. The first five 0.9s (indices 0, 2, 4, 6, 8) are the hits of 5 instances: ranked
    first, AP 1; the last five (10..18) ranked after five misses: precision 1/6 ... 5/10 at
    recall 1/5 ... 1, whose envelope is 5/10 everywhere, AP 1/2."""
    first = np.zeros(20, bool)
    first[[0, 2, 4, 6, 8]] = True
    ap, rec, prec = average_precision(TIED_SCORES, first, 5)
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(rec[:5], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(prec[:5], 1.0)
    last = np.zeros(20, bool)
    last[[10, 12, 14, 16, 18]] = True
    ap, _, prec = average_precision(TIED_SCORES, last, 5)
    np.testing.assert_allclose(prec[:10], [0, 0, 0, 0, 0, 1 / 6, 2 / 7, 3 / 8, 4 / 9, 5 / 10])
    assert ap == pytest.approx(0.5)


def test_many_tied_scores_match_in_dataset_order():
    """In one image, 20 predictions all overlap each of 5 instances by IoU 0.6: the first five
    0.9s in dataset order take the instances (SDS's rule), the other 15 are misses."""
    ious = np.full((20, 5), 0.6)
    for style in ("voc", "coco"):
        tp = match_image(TIED_SCORES, ious, 0.5, style)
        assert np.flatnonzero(tp).tolist() == [0, 2, 4, 6, 8], style


def test_classes_without_gt_or_without_predictions():
    h = w = 8
    gt1 = make_sample([box(h, w, 0, 4, 0, 4), box(h, w, 4, 8, 4, 8)], [1, 2], image_id=1)
    gt2 = make_sample([box(h, w, 0, 8, 0, 2)], [1], image_id=2)
    # class 3 ("c") has a prediction but no ground truth
    p1 = preds([box(h, w, 0, 4, 0, 4), box(h, w, 0, 2, 6, 8)], [1, 3], [0.9, 0.4], 1)
    p2 = preds([box(h, w, 0, 8, 0, 2)], [1], [0.8], 2)
    m = evaluate([gt1, gt2], [p1, p2], ["a", "b", "c"], thresholds=[0.5])
    np.testing.assert_allclose(m.ap[0.5][:2], [1.0, 0.0])  # b has GT but no prediction: 0
    assert math.isnan(m.ap[0.5][2])  # c has no GT: no AP, not averaged
    assert m.ap_r == {"0.5": 50.0}
    d = m.to_dict()
    assert d["per_class"]["c"]["ap_r"] == {"0.5": None} and d["per_class"]["c"]["num_pred"] == 1
    assert d["classes_averaged"] == ["a", "b"]
    assert (d["num_images"], d["num_gt"], d["num_pred"]) == (2, 3, 3)
    assert d["ap_r_vol"] == pytest.approx(50.0)


def test_void_is_left_out_of_areas_and_intersection():
    g = box(4, 8, 0, 4, 0, 4)
    void = box(4, 8, 0, 4, 4, 8)
    gt = make_sample([g], [1], void=void)
    pred = preds([np.ones((4, 8), bool)], [1], [1.0])  # gt + the void half: IoU 1 without void
    assert mask_ious(pred.masks, gt.instance_masks())[0, 0] == 0.5
    assert mask_ious(pred.masks, gt.instance_masks(), void)[0, 0] == 1.0
    m = evaluate([gt], [pred], ["a"], thresholds=[0.9])
    assert m.ap_r == {"0.9": 100.0} and m.ap_r_vol == 100.0


def test_an_instance_hidden_by_void_is_no_positive():
    """Instance 2 lies wholly under void (SBD crops, COCO crowds): it cannot be found, so it is
    not a positive. One perfect prediction of instance 1: recall 1 of 1, AP 100 (not 50)."""
    a, b = box(8, 8, 0, 4, 0, 4), box(8, 8, 4, 8, 4, 8)
    gt = make_sample([a, b], [1, 1], void=b)
    m = evaluate([gt], [preds([a], [1], [0.9])], ["a"], thresholds=[0.5])
    assert m.num_gt.tolist() == [1]
    assert m.ap_r == {"0.5": 100.0}


def test_ap_vol_is_mean_over_nine_thresholds():
    gt = make_sample([box(10, 10, 0, 10, 0, 10)], [1])
    pred = preds([box(10, 10, 0, 10, 0, 5)], [1], [1.0])  # IoU 0.5
    m = evaluate([gt], [pred], ["a"])
    assert [m.ap[t][0] for t in VOL_THRESHOLDS] == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m.ap_r_vol == pytest.approx(400 / 9)


def test_semantic_mean_iou_by_hand():
    cls = np.array([[0, 1, 1], [2, 2, 255]], np.uint8)
    gt = Sample(np.zeros((2, 3, 3), np.uint8), cls, np.zeros((2, 3), np.int32),
                np.zeros(0, np.int64), "s")
    sem = np.array([[0, 1, 0], [2, 1, 1]], np.uint8)
    m = evaluate([gt], [Instances.empty(2, 3)], ["a", "b", "c"], semantic=[sem])
    # IoU: background 1/2, a 1/3, b 1/2; c occurs nowhere (NaN, not averaged)
    np.testing.assert_allclose(m.class_iou()[:3], [1 / 2, 1 / 3, 1 / 2])
    assert math.isnan(m.class_iou()[3])
    assert m.miou == pytest.approx(100 * 4 / 9)
    # without `semantic`, the instances' class map is used: all background here, so
    # background IoU 1/5 (1 hit, 5 pixels predicted), a and b 0
    m = evaluate([gt], [Instances.empty(2, 3)], ["a", "b", "c"])
    assert m.miou == pytest.approx(100 / 5 / 3)


def test_bad_inputs_raise_dataset_error():
    gt = make_sample([box(4, 4, 0, 2, 0, 2)], [1])
    with pytest.raises(DatasetError, match="5x4 pixels but the ground truth is 4x4"):
        evaluate([gt], [Instances.empty(4, 5)], ["a"])
    with pytest.raises(DatasetError, match="outside 1..1"):
        evaluate([gt], [preds([box(4, 4, 0, 1, 0, 1)], [2], [1.0])], ["a"])
    with pytest.raises(DatasetError, match="1 predictions for 2"):
        evaluate([gt, gt], [Instances.empty(4, 4)], ["a"])
    with pytest.raises(ValueError, match="ap_style"):
        Evaluator(["a"], ap_style="voc2007")


# ----------------------------------------------------------------------------- COCOeval agreement

def random_case(seed: int, n_images: int = 6, n_classes: int = 3, h: int = 24, w: int = 32):
    rng = np.random.default_rng(seed)
    gts, prs = [], []
    for i in range(n_images):
        masks, classes = [], []
        taken = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 5)):
            y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
            m = box(h, w, y0, y0 + rng.integers(4, 12), x0, x0 + rng.integers(4, 14)) & ~taken
            if m.sum() < 4:
                continue
            taken |= m
            masks.append(m)
            classes.append(int(rng.integers(1, n_classes + 1)))
        void = box(h, w, h - 2, h, 0, w) & ~taken if i % 2 else None
        gts.append(make_sample(masks, classes, void, image_id=i + 1))
        pm, pc = [], []
        for m, c in zip(masks, classes):  # perturbed copies, some duplicated
            for _ in range(rng.integers(0, 3)):
                dy, dx = rng.integers(-3, 4, size=2)
                pm.append(np.roll(np.roll(m, dy, 0), dx, 1))
                pc.append(c if rng.random() < 0.85 else int(rng.integers(1, n_classes + 1)))
        for _ in range(rng.integers(0, 3)):  # background false positives
            y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
            pm.append(box(h, w, y0, y0 + 5, x0, x0 + 6))
            pc.append(int(rng.integers(1, n_classes + 1)))
        scores = rng.random(len(pm)).astype(np.float32)
        prs.append(Instances(np.array(pm, bool).reshape(-1, h, w), pc, scores, i + 1))
    return gts, prs


def cocoeval_ap(gts: list[Sample], prs: list[Instances], n_classes: int,
                threshold: float) -> np.ndarray:
    """Per-class AP of pycocotools COCOeval (one IoU threshold, area 'all', many dets)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pfn_napari.evaluate import encode_masks

    images, anns = [], []
    for s in gts:
        h, w = s.class_map.shape
        images.append({"id": s.image_id, "height": h, "width": w})
        for m, c in zip(s.instance_masks(), s.instance_classes):
            rle = encode_masks(m[None])[0]
            anns.append({"id": len(anns) + 1, "image_id": s.image_id, "category_id": int(c),
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
    gt_api = COCO()
    gt_api.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in range(1, n_classes + 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api.createIndex()
        void_free = []  # the same void rule: void pixels removed from predictions
        for s, p in zip(gts, prs):
            void = s.instance_map == 255
            void_free.append(Instances(p.masks & ~void[None], p.classes, p.scores, p.image_id))
        dt_api = gt_api.loadRes(instances_to_coco_results(void_free, list(range(1, n_classes + 1))))
        ev = COCOeval(gt_api, dt_api, "segm")
        ev.params.iouThrs = np.array([threshold])
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [10000]
        ev.params.useCats = 1
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (101, K)
    return np.array([precision[:, k].mean() if (precision[:, k] > -1).all() else np.nan
                     for k in range(n_classes)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_style_agrees_with_pycocotools(seed):
    gts, prs = random_case(seed)
    thresholds = (0.3, 0.5, 0.75)
    m = evaluate(gts, prs, ["a", "b", "c"], thresholds=thresholds, ap_style="coco")
    assert sum(len(p) for p in prs) > 10
    for t in thresholds:
        ref = cocoeval_ap(gts, prs, 3, t)
        np.testing.assert_allclose(m.ap[t], ref, atol=1e-6, equal_nan=True)
        assert m.mean_ap(t) == pytest.approx(np.nanmean(ref), abs=1e-6)
        assert 0 < m.mean_ap(t) < 1  # a non-trivial case


def test_styles_differ_on_the_random_case():
    gts, prs = random_case(0)
    aps = {s: evaluate(gts, prs, ["a", "b", "c"], ap_style=s).ap_r_vol
           for s in ("voc", "coco", "mnc")}
    assert len({round(v, 6) for v in aps.values()}) == 3, aps


# ----------------------------------------------------------------------------- reports and files

def test_format_table_and_write_metrics(tmp_path):
    gt = make_sample([box(4, 4, 0, 2, 0, 2)], [1])
    m = evaluate([gt], [Instances.from_sample(gt)], ["cat", "dog"])
    table = format_table(m, ["cat", "dog"])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[2:5]] == ["cat", "dog", "mean"]
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "AP^r@0.5", "AP^r@0.6", "AP^r@0.7", "AP^r@0.8", "AP^r@0.9", "AP^r_vol", "IoU",
        "count error", "precision", "false / image"]
    assert [c.strip() for c in lines[2].split("|")[2:5]] == ["100.0", "-", "100.0"]
    assert [c.strip() for c in lines[-4].split("|")[2:5]] == ["100.0", "-", "100.0"]
    assert [c.strip() for c in lines[-3].split("|")[2:5]] == ["0.00", "0.00", "0.00"]
    assert [c.strip() for c in lines[-2].split("|")[2:5]] == ["100.0", "-", "100.0"]
    assert [c.strip() for c in lines[-1].split("|")[2:5]] == ["0.00", "0.00", "0.00"]
    json_path, md_path = write_metrics(m, tmp_path / "out", ["cat", "dog"])
    data = json.loads(json_path.read_text())
    assert data["ap_r"] == {"0.5": 100.0, "0.6": 100.0, "0.7": 100.0, "0.8": 100.0, "0.9": 100.0}
    assert data["ap_r_vol"] == 100.0 and data["miou"] == 100.0 and data["ap_style"] == "voc"
    assert data["per_class"]["cat"]["ap_r_vol"] == 100.0
    assert data["per_class"]["dog"]["ap_r_vol"] is None
    assert data["pr_curves"]["0.5"]["cat"] == {"recall": [1.0], "precision": [1.0]}
    assert "| AP^r_vol" in md_path.read_text()
    assert data["per_class"]["cat"]["count_error"] == 0.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics.md"]
    assert set(m.pr_curves(0.5)) == {"cat"}


# ----------------------------------------------------------------------------- COCO results JSON

class ListDataset(list):
    """A Sequence[Sample] with the PFNDataset attributes the readers use."""

    def __init__(self, samples, classes, category_ids):
        super().__init__(samples)
        self.classes = tuple(classes)
        self.category_ids = tuple(category_ids)
        self.image_ids = [s.image_id for s in samples]
        self.name = "list"


def test_coco_results_round_trip(tmp_path):
    gts, prs = random_case(3, n_images=3)
    prs[1] = Instances.empty(24, 32, gts[1].image_id)  # an image without predictions
    ds = ListDataset(gts, ["a", "b", "c"], [7, 9, 11])
    results = instances_to_coco_results(prs, ds.category_ids)
    assert {r["category_id"] for r in results} <= {7, 9, 11}
    assert isinstance(results[0]["segmentation"]["counts"], str)
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(results))
    back = read_coco_results(path, ds)
    assert len(back) == 3 and len(back[1]) == 0 and back[1].image_size == (24, 32)
    for a, b in zip(prs, back):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.scores, b.scores)
        assert b.image_id == a.image_id
    direct = evaluate(gts, prs, ds.classes).to_dict(curves=False)
    assert evaluate(gts, back, ds.classes).to_dict(curves=False) == direct


@pytest.mark.parametrize("content, message", [
    ("[{", "not valid JSON"),
    ('{"a": 1}', "expected a list"),
    ('[{"image_id": 1, "category_id": 7, "score": 1}]', "entry 0: missing segmentation"),
    ('[{"image_id": 99, "category_id": 7, "score": 1, "segmentation": {}}]',
     "entry 0: image_id 99 is not an image"),
    ('[{"image_id": 1, "category_id": 8, "score": 1, "segmentation": {}}]',
     "entry 0: category_id 8 unknown"),
    ('[{"image_id": 1, "category_id": 7, "score": "x", "segmentation": {}}]',
     "entry 0: score must be a number, got 'x'"),
    ('[{"image_id": 1, "category_id": 7.7, "score": 1, "segmentation": {}}]',
     "entry 0: category_id must be an integer, got 7.7"),
    ('[{"image_id": 1, "category_id": true, "score": 1, "segmentation": {}}]',
     "entry 0: category_id must be an integer, got True"),
    ('[{"image_id": 1, "category_id": "7", "score": 1, "segmentation": {}}]',
     "entry 0: category_id must be an integer, got '7'"),
    ('[{"image_id": 1, "category_id": 7, "score": true, "segmentation": {}}]',
     "entry 0: score must be a number, got True"),
])
def test_read_coco_results_errors(tmp_path, content, message):
    gt = make_sample([box(4, 4, 0, 2, 0, 2)], [1], image_id=1)
    ds = ListDataset([gt], ["a"], [7])
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        read_coco_results(path, ds)
    assert str(path) in str(info.value)


def test_read_coco_results_wrong_mask_size(tmp_path):
    gt = make_sample([box(4, 4, 0, 2, 0, 2)], [1], image_id="a1")
    ds = ListDataset([gt], ["a"], [1])
    entries = instances_to_coco_results([preds([box(4, 4, 0, 1, 0, 1)], [1], [0.5], "a1")], [1])
    entries.append(instances_to_coco_results(
        [Instances(np.ones((1, 5, 4), bool), [1], [0.4], "a1")], [1])[0])
    entries.append({"image_id": "a1", "category_id": 1, "score": 0.3,
                    "segmentation": {"size": [4, 4], "counts": 5}})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries[:2]))
    with pytest.raises(DatasetError, match=r"entry 1 \(image_id 'a1'\): mask size \[5, 4\]"):
        read_coco_results(path, ds)
    path.write_text(json.dumps([entries[0], entries[2]]))
    with pytest.raises(DatasetError, match="entry 1.*'counts' must be"):
        read_coco_results(path, ds)
    # polygons and uncompressed RLE are read too
    poly = {"image_id": "a1", "category_id": 1, "score": 0.2,
            "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}
    unc = {"image_id": "a1", "category_id": 1, "score": 0.1,
           "segmentation": {"size": [4, 4], "counts": [0, 2, 14]}}
    path.write_text(json.dumps([entries[0], poly, unc]))
    inst = read_coco_results(path, ds)[0]
    assert len(inst) == 3 and inst.masks[1].sum() > 0
    np.testing.assert_array_equal(np.flatnonzero(inst.masks[2].ravel(order="F")), [0, 1])


def test_count_error_is_the_mean_absolute_error_per_image():
    one = make_sample([box(6, 6, 0, 2, 0, 2), box(6, 6, 3, 5, 3, 5)], [1, 1])  # two cats
    two = make_sample([box(6, 6, 0, 2, 0, 2)], [2])  # one dog
    pred_one = Instances.from_sample(make_sample([box(6, 6, 0, 2, 0, 2)], [1]))  # one cat
    pred_two = Instances.from_sample(make_sample([box(6, 6, 0, 2, 0, 2), box(6, 6, 4, 6, 4, 6)],
                                                 [1, 2]))  # a cat and a dog
    m = evaluate([one, two], [pred_one, pred_two], ["cat", "dog"])
    # cat: |1 - 2| + |1 - 0| = 2 over 2 images; dog: |0 - 0| + |1 - 1| = 0
    assert m.count_error().tolist() == [1.0, 0.0]


# ----------------------------------------------------------------------------- shown objects

def test_right_objects_is_greedy_by_score_and_counts_iou_of_one_half():
    # two true instances; A (0.9) overlaps G1 0.8 / G2 0.6; B (0.8) overlaps G1 0.7 / G2 0.5
    ious = np.array([[0.8, 0.6], [0.7, 0.5]])
    assert right_objects(np.array([0.9, 0.8]), ious).tolist() == [True, True]  # B takes G2 at 0.5
    # B ranked first takes G1; A falls back to G2 (0.6): both right
    assert right_objects(np.array([0.5, 0.8]), ious).tolist() == [True, True]
    # a second prediction on the one true instance is false (it is matched once)
    assert right_objects(np.array([0.9, 0.8]), np.array([[0.9], [0.8]])).tolist() == [True, False]
    assert right_objects(np.array([0.9]), np.array([[0.49]])).tolist() == [False]
    # no true instance: every prediction is false
    assert right_objects(np.array([0.9, 0.1]), np.zeros((2, 0))).tolist() == [False, False]


def test_precision_and_false_objects_per_image_on_hand_made_masks():
    """Two images of 8 x 8, classes cat (1) and dog (2).

    Image 1: true cats G1 (rows 0-3, cols 0-3: 16 px) and G2 (rows 4-7, cols 4-7: 16 px), a
    true dog D (rows 0-1, cols 6-7: 4 px). Shown: cat A (0.9) = G1 exactly (IoU 1, right); cat
    B (0.8) = rows 0-3, cols 0-1 (8 px inside G1, used by A; IoU with G2 0: false); cat C (0.7)
    = rows 4-7, cols 4-5 (8 of G2's 16: IoU 0.5, right); dog E (0.6) = rows 0-3, cols 6-7 (D's 4
    px of 8: IoU 0.5, right). Image 2 holds no true object: its shown cat F and dog H are false.
    cat: 4 shown, 2 right (50 %); dog: 2 shown, 1 right (50 %); all: 6 shown, 3 right (50 %);
    false per image: cat (4 - 2) / 2 = 1, dog (2 - 1) / 2 = 0.5, all 1.5."""
    g1, g2, d = box(8, 8, 0, 4, 0, 4), box(8, 8, 4, 8, 4, 8), box(8, 8, 0, 2, 6, 8)
    one = make_sample([g1, g2, d], [1, 1, 2], image_id="one")
    two = Sample(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8),
                 np.zeros((8, 8), np.int32), np.zeros(0, np.int64), "two")
    shown_one = preds([g1, box(8, 8, 0, 4, 0, 2), box(8, 8, 4, 8, 4, 6), box(8, 8, 0, 4, 6, 8)],
                      [1, 1, 1, 2], [0.9, 0.8, 0.7, 0.6], "one")
    shown_two = preds([box(8, 8, 0, 4, 0, 4), box(8, 8, 4, 8, 4, 8)], [1, 2], [0.9, 0.9], "two")
    m = evaluate([one, two], [shown_one, shown_two], ["cat", "dog"])
    assert m.num_pred.tolist() == [4, 2] and m.num_right.tolist() == [2, 1]
    assert m.class_precision().tolist() == [0.5, 0.5]
    assert m.class_false_per_image().tolist() == [1.0, 0.5]
    assert m.precision == 50.0 and m.false_per_image == 1.5
    data = m.to_dict(curves=False)
    keys = ("num_pred", "num_right", "precision", "false_per_image")
    assert [data["per_class"]["cat"][k] for k in keys] == [4, 2, 50.0, 1.0]
    assert [data["per_class"]["dog"][k] for k in keys] == [2, 1, 50.0, 0.5]
    assert (data["num_pred"], data["num_right"], data["precision"],
            data["false_per_image"]) == (6, 3, 50.0, 1.5)


def test_a_photo_without_true_objects_makes_every_shown_object_false(tmp_path):
    empty = Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8),
                   np.zeros((4, 4), np.int32), np.zeros(0, np.int64), "empty")
    shown = preds([box(4, 4, 0, 2, 0, 2), box(4, 4, 2, 4, 2, 4), box(4, 4, 0, 4, 0, 4)],
                  [1, 1, 2], [0.9, 0.5, 0.3], "empty")
    m = evaluate([empty], [shown], ["cat", "dog"])
    assert m.num_right.tolist() == [0, 0] and m.precision == 0.0 and m.false_per_image == 3.0
    _, md = write_metrics(m, tmp_path / "out", ["cat", "dog"])
    assert ("- shown objects 3, right 0 (IoU >= 0.5 with a true object of their class): "
            "precision 0.0 %, 3.00 false objects per image") in md.read_text()
    nothing = evaluate([empty], [preds([], [], [], "empty")], ["cat"])
    assert math.isnan(nothing.precision) and nothing.false_per_image == 0.0
    assert nothing.to_dict()["precision"] is None


def test_precision_leaves_void_pixels_out_as_ap_does():
    """A true cat of 4 px with 4 void px beside it; the shown cat covers the cat, the void and
    4 background px (12 px): IoU 4/8 = 0.5 with the void left out (right), 4/12 counting it."""
    void = box(4, 6, 0, 2, 2, 4)
    gt = make_sample([box(4, 6, 0, 2, 0, 2)], [1], void=void)
    shown = preds([box(4, 6, 0, 2, 0, 6)], [1], [0.9])  # 4 cat + 4 void + 4 background px
    m = evaluate([gt], [shown], ["cat"])
    assert m.num_right.tolist() == [1] and m.precision == 100.0


def test_read_coco_results_checks_rle_runs(tmp_path):
    """An RLE whose runs do not cover the image (empty, a 10x10 mask under a 20x16 header,
    uncompressed runs short of H x W) is a named error, not garbage decoded differently each
    time."""
    gt = make_sample([box(20, 16, 0, 2, 0, 2)], [1], image_id="a1")
    ds = ListDataset([gt], ["a"], [1])
    small = instances_to_coco_results([Instances(np.ones((1, 10, 10), bool), [1], [0.5], "a1")],
                                      [1])[0]
    path = tmp_path / "p.json"
    cases = [
        ({"size": [20, 16], "counts": ""},
         r"entry 0 \(image_id 'a1'\): corrupt compressed RLE \(empty 'counts'\)"),
        ({"size": [20, 16], "counts": small["segmentation"]["counts"]},
         r"RLE runs add up to 100 pixels, but the image has 20 x 16 = 320"),
        ({"size": [20, 16], "counts": [0, 2, 14]}, r"RLE runs add up to 16 pixels"),
        ({"size": [20, 16], "counts": [0, -2, 322]}, r"negative run length \(-2\)"),
        ({"size": [20, 16], "counts": "0P"},
         r"corrupt compressed RLE \('counts' ends in the middle of a number"),
    ]
    for segmentation, message in cases:
        path.write_text(json.dumps([{"image_id": "a1", "category_id": 1, "score": 0.5,
                                     "segmentation": segmentation}]))
        with pytest.raises(DatasetError, match=message):
            read_coco_results(path, ds)


def test_encoded_instances_evaluate_like_masks():
    """RLEs (what a results file holds, never decoded all at once) give the same metrics as
    the decoded masks, void included."""
    from pfn_napari.evaluate import EncodedInstances, encode_masks

    gts, prs = random_case(4)
    encoded = [EncodedInstances(encode_masks(p.masks), p.classes, p.scores, p.image_size,
                                p.image_id) for p in prs]
    np.testing.assert_array_equal(encoded[0].class_map(), prs[0].class_map())
    np.testing.assert_array_equal(encoded[1].to_instances().masks, prs[1].masks)
    names = ["a", "b", "c"]
    assert evaluate(gts, encoded, names).to_dict() == evaluate(gts, prs, names).to_dict()
