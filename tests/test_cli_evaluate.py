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


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory):
    """A tiny untrained model on the synthetic classes (its outputs are faked below)."""
    import torch

    from pfn_napari.checkpoint import save_weights
    from pfn_napari.config import load_config
    from pfn_napari.model import build_system

    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[fc7]",
                                    "model.fc7_channels=16", "model.count_hidden=8"])
    torch.manual_seed(0)
    system = build_system(cfg.model, "instance").eval()
    return save_weights(tmp_path_factory.mktemp("w") / "shapes.pt", system, cfg)


def test_oracle_locations_on_the_model_segmentation(shapes_weights, tmp_path, monkeypatch,
                                                    capsys):
    """A fake network that gets classes and counts right but says 0.5 for every location:
    grouped as it is, same-class instances merge; with --oracle-locations (the paper's bound)
    the true locations are clustered on its (here perfect) segmentation: AP^r 100."""
    from dataclasses import replace

    import pfn_napari.inference as inference
    from pfn_napari.grouping import oracle_network_output

    data = open_dataset("synthetic:3@1", "val")
    by_id = {str(s.image_id): s for s in data}

    def fake_run_network(model, image, crf=None, name="image", **kw):
        net = oracle_network_output(by_id[name], 3, full_classes=True)
        return replace(net, locations=np.full_like(net.locations, 0.5))

    monkeypatch.setattr(inference, "run_network", fake_run_network)
    common = [str(shapes_weights), "--data", "synthetic:3@1", "--split", "val",
              "--grouping", "vote", "--thresholds", "0.5"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "net")]) == 0
    as_is = json.loads((tmp_path / "net" / "metrics.json").read_text())["ap_r"]["0.5"]
    assert main(["evaluate", *common, "--oracle-locations", "--out", str(tmp_path / "ol")]) == 0
    bound = json.loads((tmp_path / "ol" / "metrics.json").read_text())["ap_r"]["0.5"]
    assert as_is < 80 and bound == pytest.approx(100.0)
    assert "ground-truth locations clustered on its own segmentation" in capsys.readouterr().out
    assert main(["evaluate", *common, "--oracle-locations", "--stride", "4",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--stride: only for --oracle-locations without CHECKPOINT" in capsys.readouterr().err


def test_crf_flags_and_settings_reach_the_networks(shapes_weights, tmp_path, monkeypatch):
    """--crf / --no-crf override the checkpoint's crf.enabled (None: keep it); --set crf.*
    reaches the CRF's settings."""
    import pfn_napari.inference as inference
    from pfn_napari.grouping import oracle_network_output

    data = open_dataset("synthetic:1@1", "val")
    seen = []

    def fake_run_network(model, image, crf=None, name="image", **kw):
        seen.append((crf.enabled, crf.iterations, model.config.crf.iterations))
        return oracle_network_output(data[0], 3, full_classes=True)

    monkeypatch.setattr(inference, "run_network", fake_run_network)
    common = [str(shapes_weights), "--data", "synthetic:1@1", "--split", "val",
              "--grouping", "vote", "--out", str(tmp_path / "o")]
    for flags in ([], ["--crf", "--set", "crf.iterations=3"], ["--no-crf"]):
        assert main(["evaluate", *common, *flags]) == 0
    # the settings travel beside the model: its own config keeps crf.iterations 10
    assert seen == [(False, 10, 10), (True, 3, 10), (False, 10, 10)]


def test_unwritable_out_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    from pfn_napari import producers

    def never(*args, **kwargs):
        raise AssertionError("evaluated although --out cannot be written")

    monkeypatch.setattr(producers, "evaluate_dataset", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert main(["evaluate", "--oracle", "--data", "synthetic:2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"pfn: error: --out {out}: "), err
    monkeypatch.undo()
    # a read-only or full disk found only when writing: the metrics are printed first
    from pfn_napari.errors import OutputError

    def full(path, text):
        raise OutputError(f"disk full while writing {path}; free some space and run again")

    monkeypatch.setattr("pfn_napari.evaluate.atomic_write_text", full)
    assert main(["evaluate", "--oracle", "--data", "synthetic:2", "--out",
                 str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "AP^r_vol 100.0" in captured.out
    assert "pfn: error: disk full while writing" in captured.err


def test_predictions_with_a_wrong_size_rle_are_refused(tmp_path, capsys):
    """A 10x10 RLE under the image's own size header would change the mIoU silently."""
    import pycocotools.mask as mask_utils

    ds = open_dataset("synthetic:2@1", "val")
    h, w = ds[0].class_map.shape
    small = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([{"image_id": ds[0].image_id, "category_id": 1, "score": 0.5,
                                 "segmentation": {"size": [h, w],
                                                  "counts": small["counts"].decode()}}]))
    assert main(["evaluate", "--predictions", str(path), "--data", "synthetic:2@1", "--split",
                 "val", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pfn: error: {path}: entry 0") and \
        f"RLE runs add up to 100 pixels, but the image has {h} x {w}" in err


def test_the_imagenet_step_reaches_the_instances_and_the_class_map(
        shapes_weights, tmp_path, monkeypatch):
    """--set imagenet.weight=5 runs the ImageNet step after the grouping (its classifier once
    per image, only then); an object the (faked) category map misses and the evidence names
    comes back as one more instance, and the mIoU counts it; --set imagenet.enabled=false
    switches it off."""
    from dataclasses import replace

    import pfn_napari.inference as inference
    import pfn_napari.predictor as predictor_module
    from pfn_napari.grouping import oracle_network_output
    from pfn_napari.structures import grid_size

    data = open_dataset("synthetic:1@1", "val")
    sample = data[0]
    missed = sample.instance_map == 1  # (H, W) the first object, erased from the category map
    cls = int(sample.class_map[missed][0])
    seen = []

    def fake_evidence(model, image):
        seen.append(image.shape[:2])
        h, w = image.shape[:2]
        evidence = np.zeros((3, grid_size(h, 32), grid_size(w, 32)), np.float32)
        evidence[cls - 1] = 0.9  # the classifier says this class everywhere: only bg is named
        return evidence

    def fake_run_network(model, image, crf=None, name="image", **kw):
        net = oracle_network_output(sample, 3, full_classes=True)
        full = net.full_class_probs.copy()  # (C+1, H, W)
        full[:, missed] = 0.0
        full[0, missed] = 1.0
        full = 0.9 * full + 0.1 / len(full)  # the network is 92.5 % sure, not certain
        return replace(net, class_probs=full[:, ::8, ::8].copy(), full_class_probs=full)

    monkeypatch.setattr(inference, "run_network", fake_run_network)
    monkeypatch.setattr(predictor_module, "imagenet_evidence", fake_evidence)
    common = [str(shapes_weights), "--data", "synthetic:1@1", "--split", "val",
              "--grouping", "vote", "--set", "grouping.count_source=votes"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "off")]) == 0
    on = ["--set", "imagenet.weight=5", "--set", "imagenet.touch=1",
          "--set", "imagenet.min_frac=0.001"]
    assert main(["evaluate", *common, *on, "--out", str(tmp_path / "on")]) == 0
    off_m = json.loads((tmp_path / "off" / "metrics.json").read_text())
    on_m = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert seen == [missed.shape]
    assert on_m["num_pred"] == off_m["num_pred"] + 1
    assert on_m["miou"] != off_m["miou"]
    switched = ["--set", "imagenet.enabled=false"]
    assert main(["evaluate", *common, *on, *switched, "--out", str(tmp_path / "sw")]) == 0
    sw_m = json.loads((tmp_path / "sw" / "metrics.json").read_text())
    assert sw_m["num_pred"] == off_m["num_pred"] and len(seen) == 1
    # the crop check asks the real ImageNet classifier, which has no class for a shape: the
    # prior's object is not confirmed and goes, from the instances and from the class map
    check = ["--set", "imagenet.check.enabled=true"]
    assert main(["evaluate", *common, *on, *check, "--out", str(tmp_path / "check")]) == 0
    check_m = json.loads((tmp_path / "check" / "metrics.json").read_text())
    assert check_m["num_pred"] == off_m["num_pred"]
    assert check_m["miou"] == pytest.approx(off_m["miou"])


@pytest.mark.parametrize("override, message", [
    ("crf.bi_xy=0", "crf.bi_xy=0.0: in [0.1, 10000] px"),
    ("crf.pos_xy=0", "crf.pos_xy=0.0: in [0.1, 10000] px"),
    ("crf.bi_rgb=0", "crf.bi_rgb=0.0: in [0.1, 1000] (colour levels 0..255)"),
    ("crf.iterations=100000000", "crf.iterations=100000000: in [0, 100]"),
    ("grouping.sigma=1e-300", "grouping.sigma=1e-300: in [0.001, 1000] (features are in "
                              "[0, 1]: outside, every affinity is 0 or 1)"),
    ("grouping.n_init=1000000", "grouping.n_init=1000000: in [1, 100]"),
    ("grouping.sigma=[1", "override 'grouping.sigma=[1': the value is not valid YAML (while "
                          "parsing a flow sequence expected ',' or ']', but got '<stream end>')"),
    ("grouping.sigma=!!python/object/apply:os.getpid []",
     "override 'grouping.sigma=!!python/object/apply:os.getpid []': the value is not valid YAML "
     "(could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.getpid')"),
])
def test_bad_settings_stop_predict_and_evaluate_with_one_line(shapes_weights, tmp_path, capsys,
                                                              override, message):
    """crf widths of 0 used to segfault (exit 139) in the CRF's C++, a sigma of 1e-300 failed
    every image with 'float division by zero', broken YAML was a traceback."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(photo)
    runs = {
        "predict": ["predict", str(shapes_weights), str(photo), "--out", str(tmp_path / "p")],
        "evaluate": ["evaluate", str(shapes_weights), "--data", "synthetic:1@1", "--split",
                     "val", "--out", str(tmp_path / "e")],
        "oracle-locations": ["evaluate", "--oracle-locations", "--data", "synthetic:1@1",
                             "--split", "val", "--out", str(tmp_path / "o")],
    }
    for name, argv in runs.items():
        code = main([*argv, "--crf", "--set", override] if name != "oracle-locations"
                    else [*argv, "--set", override])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (name, err)
        if name == "oracle-locations" and override.startswith("crf."):  # no CRF runs there
            message = (f"--set {override}: pfn evaluate --oracle-locations reads only the "
                       "grouping section; drop this override")
        assert err.strip().splitlines()[-1] == f"pfn: error: {message}", (name, err)
    assert not list((tmp_path / "e").glob("metrics.*"))


def test_data_without_a_labelled_object_is_refused(tmp_path, capsys):
    """It used to score 'mIoU 100.0' on the background alone."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"p{i}.png")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(masks / f"p{i}_mask.png")
    spec = f"folder:{images}:{masks}:person"
    code = main(["evaluate", "--oracle", "--data", spec, "--split", "all",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and capsys.readouterr().err == (
        f"pfn: error: --data {spec} --split all: none of its 3 images has a labelled object of "
        "the classes ['person']; there is nothing to score (check its masks or annotations, or "
        "--classes)\n")
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("option, message", [
    (["--noise", "-1"], "--noise -1.0: a standard deviation in [0, 1] (normalised units: 1 is "
                        "the whole image)"),
    (["--noise", "nan"], "--noise nan: a standard deviation in [0, 1]"),
    (["--stride", "0"], "--stride 0: a grid stride from 1 to 64 pixels (8 is the network's)"),
    (["--stride", "-8"], "--stride -8: a grid stride from 1 to 64 pixels"),
    (["--seed", "-1"], "--seed -1: from 0 to 2^32 - 1"),
])
def test_numeric_options_are_range_checked(tmp_path, capsys, option, message):
    """--stride 0 was taken as 8, --noise nan scored nan locations, --seed -1 a traceback."""
    code = main(["evaluate", "--oracle-locations", "--data", "synthetic:1@1", "--split", "val",
                 "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"pfn: error: {message}") and err.count("\n") == 1, err


def test_set_refuses_a_section_the_command_does_not_read(shapes_weights, tmp_path, capsys):
    """pfn predict and pfn evaluate CHECKPOINT read grouping, crf, imagenet and show from --set; a
    model or train override used to be accepted and ignored."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(photo)
    runs = {
        "pfn predict": ["predict", str(shapes_weights), str(photo), "--out", str(tmp_path / "p")],
        "pfn evaluate CHECKPOINT": ["evaluate", str(shapes_weights), "--data", "synthetic:1@1",
                                    "--split", "val", "--out", str(tmp_path / "e")],
    }
    for command, argv in runs.items():
        for override in ("model.dropout=0.1", "train.lr=1"):
            assert main([*argv, "--set", override]) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == (
                f"pfn: error: --set {override}: {command} reads only the grouping, crf, "
                "imagenet and show sections; drop this override")
    assert not (tmp_path / "p").exists() and not list((tmp_path / "e").glob("metrics.*"))


def test_shown_classes_reach_the_instances_the_class_map_and_the_summary(
        shapes_weights, tmp_path, monkeypatch, capsys):
    """Networks faked to the truth of synthetic:2@1 (image 0: triangle, square, disc, square;
    image 1: disc, square): every class shown gives 6 objects, all right; --set
    show.classes=[disc] shows the 2 discs alone (right), the squares and the triangle are
    dropped and their pixels are background (their class IoU 0); an unknown name is one line
    naming it and the model's classes."""
    import pfn_napari.inference as inference
    from pfn_napari.grouping import oracle_network_output

    data = open_dataset("synthetic:2@1", "val")
    truths = {data[i].image.tobytes(): data[i] for i in range(len(data))}

    def fake_run_network(model, image, crf=None, name="image", **kw):
        return oracle_network_output(truths[image.tobytes()], 3, full_classes=True)

    monkeypatch.setattr(inference, "run_network", fake_run_network)
    common = [str(shapes_weights), "--data", "synthetic:2@1", "--split", "val",
              "--grouping", "vote", "--set", "imagenet.weight=0"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "all")]) == 0
    every = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert (every["num_pred"], every["num_right"], every["precision"],
            every["false_per_image"]) == (6, 6, 100.0, 0.0)
    assert ("shown objects 6, right 6 (IoU >= 0.5 with a true object of their class): "
            "precision 100.0 %, 0.00 false objects per image") in capsys.readouterr().out
    assert main(["evaluate", *common, "--set", "show.classes=[disc]",
                 "--out", str(tmp_path / "disc")]) == 0
    disc = json.loads((tmp_path / "disc" / "metrics.json").read_text())
    assert [disc["per_class"][c]["num_pred"] for c in ("disc", "square", "triangle")] == [2, 0, 0]
    assert disc["num_right"] == 2 and disc["precision"] == 100.0
    assert disc["class_iou"]["disc"] == pytest.approx(every["class_iou"]["disc"])
    assert disc["class_iou"]["square"] == 0.0 and disc["class_iou"]["triangle"] == 0.0
    assert main(["evaluate", *common, "--set", "show.classes=[disc,cow]",
                 "--out", str(tmp_path / "cow")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pfn: error: show.classes: 'cow' is not a class of the model (its classes: disc, "
        "square, triangle; [] shows every class)")
