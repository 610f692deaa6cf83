"""``pfn evaluate``: the oracle gives 100 on real and synthetic data; a predictions.json round
trip; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfn_napari.cli import main
from pfn_napari.data import open_dataset
from pfn_napari.evaluate import instances_to_coco_results
from pfn_napari.structures import Instances


def test_oracle_on_real_voc_layout_val(voc_coco_root, tmp_path, capsys):
    out = tmp_path / "oracle"
    assert main(["evaluate", "--oracle", "--data", f"voc:{voc_coco_root}", "--split", "val",
                 "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["num_images"] == 17 and data["num_gt"] == data["num_pred"] > 0
    assert data["ap_r"] == {k: 100.0 for k in ("0.5", "0.6", "0.7", "0.8", "0.9")}
    assert data["ap_r_vol"] == 100.0 and data["miou"] == 100.0
    for name, entry in data["per_class"].items():
        assert entry["ap_r_vol"] == (100.0 if entry["num_gt"] else None), name
    printed = capsys.readouterr().out
    assert "| AP^r@0.5" in printed and "aeroplane" in printed and "| AP^r_vol" in printed
    assert (out / "metrics.md").read_text().count("100.0") > 20


@pytest.mark.parametrize("style", ["voc", "coco", "mnc"])
def test_oracle_on_synthetic(tmp_path, style):
    out = tmp_path / style
    assert main(["evaluate", "--oracle", "--data", "synthetic:5@3", "--split", "val",
                 "--out", str(out), "--ap-style", style, "--thresholds", "0.5,0.75,0.9"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["ap_style"] == style and data["num_images"] == 5
    assert data["ap_r"] == pytest.approx({"0.5": 100.0, "0.75": 100.0, "0.9": 100.0})
    assert data["ap_r_vol"] == pytest.approx(100.0)


def test_predictions_round_trip(tmp_path):
    """Write a COCO results file for a known prediction, evaluate it: the numbers we expect."""
    ds = open_dataset("synthetic:4@5", "val")
    preds = []
    for i in range(len(ds)):
        s = ds[i]
        inst = Instances.from_sample(s)
        if i == 0:  # drop image 0's first instance: one missed positive
            inst = Instances(inst.masks[1:], inst.classes[1:], inst.scores[1:], s.image_id)
        if i == 1:  # a confident false positive (class 1) on image 1's background
            fp = np.zeros((1, *s.class_map.shape), bool)
            fp[0, :3, :3] = True
            inst = Instances(np.concatenate([inst.masks, fp]), [*inst.classes, 1],
                             [*inst.scores, 2.0], s.image_id)
        preds.append(inst)
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(instances_to_coco_results(preds, ds.category_ids)))
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(path), "--data", "synthetic:4@5",
                 "--split", "val", "--out", str(out), "--thresholds", "0.5"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    missed = int(ds[0].instance_classes[0])
    gts = {name: entry["num_gt"] for name, entry in data["per_class"].items()}
    expected = {}
    for c, name in enumerate(ds.classes, start=1):
        n = gts[name]
        if not n:
            continue
        found = n - (c == missed)
        if c == 1:  # the FP ranks first (score 2): precision k/(k+1) at recall k/n, whose
            # monotone envelope is found/(found+1) up to recall found/n
            expected[name] = 100 * (found / n) * found / (found + 1)
        else:
            expected[name] = 100 * found / n
    for name, ap in expected.items():
        assert data["per_class"][name]["ap_r"]["0.5"] == pytest.approx(ap), name
    assert data["ap_r"]["0.5"] == pytest.approx(np.mean(list(expected.values())))
    assert data["ap_r"]["0.5"] < 100


def test_bad_options_give_one_line_errors(tmp_path, capsys):
    cases = [
        (["--data", "synthetic:2"], "nothing to evaluate"),
        (["--oracle", "--predictions", "p.json", "--data", "synthetic:2"], "choose one of"),
        (["--oracle", "--data", "synthetic:2", "--thresholds", "0.5,1.5"], "in [0, 1)"),
        (["--predictions", str(tmp_path / "none.json"), "--data", "synthetic:2"], "not found"),
        (["--oracle", "--data", "bogus"], "dataset spec"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": "nope", "category_id": 1, "score": 1, "segmentation": {}}]')
    cases.append((["--predictions", str(bad), "--data", "synthetic:2"], "entry 0: image_id 'nope'"))
    for argv, message in cases:
        assert main(["evaluate", *argv, "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("pfn: error: ") and message in err[-1], (argv, err)
