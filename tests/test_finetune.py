"""pfn_napari.finetune: new class channels, classes the data does not label kept, the loss
falling, exact resume, final.pt loading everywhere, the card."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pfn_napari.checkpoint import load_checkpoint, save_weights
from pfn_napari.config import VOID, ConfigError, load_config
from pfn_napari.data.corrections import correction_spec, save_correction
from pfn_napari.errors import DatasetError, OutputError
from pfn_napari.finetune import (NEW_CLASS_BIAS, add_classes, drop_classes, finetune,
                                 keep_unlabelled, measured_size, measurement_note,
                                 plan_classes, show_taught, start_was_better)
from pfn_napari.inference import load_model
from pfn_napari.model import build_system
from pfn_napari.predictor import Predictor

#: crops of 65 pixels, batch 2, no workers: a step takes a fraction of a second
RECIPE = ("data: {crop_size: 65, num_workers: 0, copy_paste: 0.0, scale_min: 1.0, "
          "scale_max: 1.0}\ntrain: {batch_size: 2, lr: 0.002, lr_new: 0.02, grad_clip: 10.0}\n")


def tiny_system():
    """An AlexNet PFN (category + instance networks) of the classes disc, square, triangle."""
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    return build_system(cfg.model, "instance").eval(), cfg


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """(weights file, recipe file)."""
    system, cfg = tiny_system()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    return save_weights(tmp_path / "tiny.pt", system, cfg), recipe


def blob_set(folder: Path, n: int = 4, cls: str = "blob") -> str:
    """``n`` 64 x 80 photos, each with a red ``cls`` rectangle and a blue disc."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(90, 140, (64, 80, 3), dtype=np.uint8)
        lab = np.zeros((64, 80), np.int64)
        lab[8:40, 6 + i:46 + i] = 1
        lab[44:62, 50:74] = 2
        img[lab == 1] = (240, 30, 30)
        img[lab == 2] = (30, 30, 240)
        save_correction(folder, img, lab, {1: cls, 2: "disc"}, f"p{i}")
    return correction_spec(folder)


def test_plan_classes_maps_by_name_and_appends_new_ones() -> None:
    model = ("aeroplane", "person", "tvmonitor")
    assert plan_classes(model, ("Person", "kayak"), None) == \
        (("aeroplane", "person", "tvmonitor", "kayak"), ("person", "kayak"))
    assert plan_classes(model, ("person",), ["tv", "boat"]) == \
        (("aeroplane", "person", "tvmonitor", "boat"), ("tvmonitor", "boat"))
    with pytest.raises(DatasetError, match="the data labels 'kayak', which is neither in "
                                           r"--classes \['boat'\]"):
        plan_classes(model, ("kayak",), ["boat"])


def test_add_classes_keeps_old_outputs_and_starts_new_ones_rare() -> None:
    system, cfg = tiny_system()
    image = torch.rand(1, 3, 65, 81) * 255
    with torch.no_grad():
        before = system(image)
        cfg2 = add_classes(system, cfg, ["blob", "kayak"])
        after = system(image)
    assert cfg2.data.classes == ("disc", "square", "triangle", "blob", "kayak")
    assert cfg2.model.num_classes == 5
    assert after.seg_logits.shape[1] == 6 and after.counts.shape[1] == 5
    assert torch.allclose(after.seg_logits[:, :4], before.seg_logits[:, :4])
    assert torch.allclose(after.seg_logits[:, 4], before.seg_logits[:, 0] - NEW_CLASS_BIAS)
    assert torch.allclose(after.counts[:, :3], before.counts)
    # the fc count head is linear in its last layer: a new count is the mean of the old ones
    assert torch.allclose(after.counts[:, 3], before.counts.mean(dim=1), atol=1e-6)
    with torch.no_grad():
        cfg3 = drop_classes(system, cfg2, ["blob", "kayak", "square"])
        dropped = system(image)
    assert cfg3.data.classes == ("disc", "triangle") and cfg3.model.num_classes == 2
    assert torch.allclose(dropped.seg_logits, before.seg_logits[:, [0, 1, 3]], atol=1e-5)


def test_keep_unlabelled_voids_background_the_model_gives_to_unlabelled_classes() -> None:
    class_map = torch.tensor([[[0, 0, 1, 0]]])  # (1, 1, 4)
    logits = torch.zeros(1, 3, 1, 4)  # background, labelled class 1, unlabelled class 2
    logits[0, 2, 0, 0] = 5.0  # p(class 2) = e^5 / (e^5 + 2) = 0.987: void
    logits[0, 2, 0, 1] = 0.5  # p = 0.45: stays background
    logits[0, 2, 0, 2] = 5.0  # labelled pixel: kept
    out = keep_unlabelled(class_map, logits, torch.tensor([False, True]))
    assert out.tolist() == [[[VOID, 0, 1, 0]]]
    assert keep_unlabelled(class_map, logits, torch.tensor([False, False])) is class_map


def test_finetune_learns_a_new_class_and_writes_a_loadable_model(tiny, tmp_path) -> None:
    weights, recipe = tiny
    spec = blob_set(tmp_path / "set")
    seen = []
    result = finetune(weights, spec, tmp_path / "out", 0, max_steps=40, recipe=recipe,
                      progress=seen.append)
    assert result.classes == ("disc", "square", "triangle", "blob") and result.steps == 40
    assert [p.step for p in seen if p.stage == "train"] == list(range(1, 41))
    assert seen[-1].stage == "done" and result.before is None  # 4 images: none held back
    losses = np.loadtxt(tmp_path / "out" / "log.csv", delimiter=",", skiprows=1, usecols=2)
    assert losses[-10:].mean() < 0.5 * losses[:5].mean()  # the loss falls
    model = load_model(result.weights, "cpu")
    assert model.config.data.classes[-1] == "blob"
    predictor = Predictor(model, crf=False)
    predictor.set_image(np.asarray(Image.open(tmp_path / "set" / "images" / "p1.png")))
    class_map = predictor.class_map()  # (64, 80)
    assert (class_map[8:40, 7:47] == 4).mean() > 0.5  # the new class, where it was taught
    assert predictor.instances().masks.shape[1:] == (64, 80)
    system, cfg, meta = load_checkpoint(result.weights)
    assert meta["finetune"]["new_classes"] == ["blob"] and meta["finetune"]["steps"] == 40
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| new classes | blob |" in card and "| steps | 40 |" in card
    with pytest.raises(OutputError, match="already holds a fine-tuning run"):
        finetune(weights, spec, tmp_path / "out", 0, max_steps=1, recipe=recipe)


def test_a_model_that_limits_its_shown_classes_shows_what_it_is_taught(tmp_path) -> None:
    system, cfg = tiny_system()
    cfg = dataclasses.replace(cfg, show=dataclasses.replace(cfg.show, classes=("square",)))
    assert show_taught(cfg, ["blob", "disc"]).show.classes == ("square", "blob", "disc")
    every = dataclasses.replace(cfg, show=dataclasses.replace(cfg.show, classes=()))
    assert show_taught(every, ["blob"]).show.classes == ()  # [] already shows every class
    dropped = drop_classes(system, cfg, ["triangle"])
    assert dropped.show.classes == ("square",)
    dropped = drop_classes(system, dropped, ["square"])  # the only shown class goes
    assert dropped.show.classes == ("disc",) and dropped.data.classes == ("disc",)
    system, _ = tiny_system()
    weights = save_weights(tmp_path / "shows-square.pt", system, cfg)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    result = finetune(weights, blob_set(tmp_path / "set"), tmp_path / "out", 0, max_steps=2,
                      recipe=recipe)
    model = load_model(result.weights, "cpu")  # a stored config that validates
    assert model.config.show.classes == ("square", "blob", "disc")


def test_a_frozen_prefix_under_a_role_freezes_that_network_only(tmp_path) -> None:
    system, cfg = tiny_system()
    weights = save_weights(tmp_path / "tiny.pt", system, cfg)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("grad_clip: 10.0", "grad_clip: 10.0, frozen: "
                                     "[instance.backbone., instance.location_head.]"))
    result = finetune(weights, blob_set(tmp_path / "set"), tmp_path / "out", 0, max_steps=3,
                      recipe=recipe)
    after = load_checkpoint(result.weights)[0]
    start = load_checkpoint(weights)[0]

    def moved(net: str, prefix: str) -> bool:
        a = dict(getattr(start, net).named_parameters())
        b = dict(getattr(after, net).named_parameters())
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix)
                   and a[k].shape == b[k].shape)

    assert not moved("instance", "backbone.") and not moved("instance", "location_head.")
    assert moved("instance", "count_head.") and moved("category", "backbone.")


def test_only_the_count_channels_of_new_classes_learn(tiny, tmp_path) -> None:
    weights, recipe = tiny
    result = finetune(weights, blob_set(tmp_path / "set"), tmp_path / "out", 0, max_steps=4,
                      recipe=recipe)
    start = load_checkpoint(weights)[0].instance.count_head.fc2
    after = load_checkpoint(result.weights)[0].instance.count_head.fc2  # disc..triangle, blob
    assert torch.equal(after.weight[:3], start.weight) and torch.equal(after.bias[:3], start.bias)
    assert not torch.equal(after.weight[3], start.weight.mean(dim=0))  # blob's channel learnt
    assert not torch.equal(load_checkpoint(result.weights)[0].instance.count_head.fc1.weight,
                           load_checkpoint(weights)[0].instance.count_head.fc1.weight)


def test_a_frozen_instance_network_is_not_run(tiny, tmp_path, monkeypatch) -> None:
    weights, _ = tiny
    recipe = tmp_path / "category-only.yaml"
    recipe.write_text(RECIPE.replace("grad_clip: 10.0", "grad_clip: 10.0, frozen: [instance.]"))
    from pfn_napari.model.pfn import PFNNet
    kinds = []
    forward = PFNNet.forward
    monkeypatch.setattr(PFNNet, "forward",
                        lambda self, x: kinds.append(self.kind) or forward(self, x))
    result = finetune(weights, blob_set(tmp_path / "set"), tmp_path / "out", 0, max_steps=3,
                      recipe=recipe)
    assert kinds == ["category"] * 3  # one forward pass per step, the category network's
    assert ("| what learned | the category network; the instance network kept as it was |"
            in (tmp_path / "out" / "README.md").read_text())
    header = (tmp_path / "out" / "log.csv").read_text().splitlines()[0]
    assert header == "step,elapsed_s,seg,total,lr_pretrained,lr_new"
    start, after = load_checkpoint(weights)[0], load_checkpoint(result.weights)[0]
    before = dict(start.instance.named_parameters())
    for name, p in after.instance.named_parameters():  # count_head.fc2 grew a row for blob
        assert torch.equal(p[: len(before[name])], before[name]), name


def test_a_recipe_that_freezes_everything_is_refused(tiny, tmp_path) -> None:
    weights, _ = tiny
    recipe = tmp_path / "frozen.yaml"
    recipe.write_text(RECIPE.replace("grad_clip: 10.0", "grad_clip: 10.0, frozen: "
                                     "[category., instance.]"))
    with pytest.raises(ConfigError, match=r"train.frozen=\['category.', 'instance.'\]: the "
                       "recipe freezes every parameter of the model"):
        finetune(weights, blob_set(tmp_path / "set"), tmp_path / "out", 0, max_steps=1,
                 recipe=recipe)


def test_start_was_better_only_when_the_held_back_ap_fell() -> None:
    assert start_was_better({"APr@0.5": 30.3}, {"APr@0.5": 22.7})
    assert not start_was_better({"APr@0.5": 30.3}, {"APr@0.5": 30.3})  # a tie keeps the new
    assert not start_was_better({"APr@0.5": 0.0}, {"APr@0.5": 12.5})
    assert not start_was_better(None, {"APr@0.5": 1.0})
    assert not start_was_better({"APr@0.5": float("nan")}, {"APr@0.5": 1.0})


def test_final_pt_is_the_start_when_the_held_back_images_scored_it_higher(
        tiny, tmp_path, monkeypatch) -> None:
    import pfn_napari.finetune as ft
    weights, _ = tiny
    recipe = tmp_path / "category-only.yaml"  # the shipped recipe's kind
    recipe.write_text(RECIPE.replace("grad_clip: 10.0", "grad_clip: 10.0, frozen: [instance.]"))
    spec = blob_set(tmp_path / "set", n=15)  # every 5th held back: 3 images measured
    scores = iter([{"APr@0.5": 50.0, "mIoU": 40.0}, {"APr@0.5": 20.0, "mIoU": 45.0}])
    monkeypatch.setattr(ft, "dataset_metrics", lambda *a, **k: next(scores))
    result = finetune(weights, spec, tmp_path / "out", 0, max_steps=3, recipe=recipe)
    assert result.kept_start and result.after["APr@0.5"] == 20.0
    start, final = load_checkpoint(weights)[0], load_checkpoint(result.weights)[0]
    trained = load_checkpoint(tmp_path / "out" / "last.pt")[0]
    fc8 = "category_head.fc8.weight"
    s, f, t = (dict(m.category.named_parameters())[fc8] for m in (start, final, trained))
    assert torch.equal(f[:4], s) and not torch.equal(t[:4], s)  # disc..triangle as they were
    assert torch.equal(f[4], s[0])  # blob's new channel: the background's copy, untrained
    card = (tmp_path / "out" / "README.md").read_text()
    assert "scored the weights it started from higher" in card
    # the card says what the run trained, not what the start it hands back could train
    assert "| what learned | the category network; the instance network kept as it was |" in card


def test_resume_is_exact(tiny, tmp_path) -> None:
    weights, recipe = tiny
    spec = blob_set(tmp_path / "set", n=3)
    whole = finetune(weights, spec, tmp_path / "whole", 0, max_steps=6, recipe=recipe)
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) == 3  # a cancel after step 3, in the middle of the first epoch

    cut = finetune(weights, spec, tmp_path / "cut", 0, max_steps=6, recipe=recipe,
                   should_stop=stop)
    assert cut.steps == 3 and (tmp_path / "cut" / "final.pt").is_file()
    done = finetune(weights, spec, tmp_path / "cut", 0, max_steps=6, recipe=recipe,
                    resume=True)
    assert done.steps == 6
    a, b = load_checkpoint(whole.weights)[0].state_dict(), load_checkpoint(done.weights)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recipe_with(folder: Path, setting: str) -> Path:
    """The tiny recipe with one more ``train`` setting (e.g. ``lr_policy: poly``), as a file."""
    path = folder / f"{setting.split(':')[0]}.yaml"
    path.write_text(RECIPE.replace("grad_clip: 10.0}", f"grad_clip: 10.0, {setting}}}"))
    return path


def test_a_poly_recipe_lowers_the_rates_to_the_end_and_resumes_exactly(tiny, tmp_path) -> None:
    weights, recipe = tiny
    poly = recipe_with(tmp_path, "lr_policy: poly")
    spec = blob_set(tmp_path / "set", n=3)
    whole = finetune(weights, spec, tmp_path / "whole", 0, max_steps=4, recipe=poly)
    with (tmp_path / "whole" / "log.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = [(1 - k / 4) ** 0.9 for k in range(4)]  # the rate each step ran at
    assert [float(r["lr_pretrained"]) for r in rows] == pytest.approx([0.002 * f for f in want],
                                                                      rel=1e-4)
    assert [float(r["lr_new"]) for r in rows] == pytest.approx([0.02 * f for f in want], rel=1e-4)
    finetune(weights, spec, tmp_path / "constant", 0, max_steps=2, recipe=recipe)
    with (tmp_path / "constant" / "log.csv").open(newline="") as fh:
        assert [float(r["lr_new"]) for r in csv.DictReader(fh)] == [0.02, 0.02]
    assert_cut_and_resumed_is_straight(weights, spec, tmp_path / "cut", poly, 4, whole.weights)


def assert_cut_and_resumed_is_straight(weights: Path, spec: str, folder: Path, recipe: Path,
                                       steps: int, straight: Path) -> None:
    """A fine-tune of ``steps`` stopped after its first step and resumed in ``folder`` ends
    with the weights of the straight run's ``straight`` file, bit for bit."""
    cut = finetune(weights, spec, folder, 0, max_steps=steps, recipe=recipe,
                   should_stop=lambda: True)
    assert cut.steps == 1
    done = finetune(weights, spec, folder, 0, max_steps=steps, recipe=recipe, resume=True)
    a = load_checkpoint(straight)[0].state_dict()
    b = load_checkpoint(done.weights)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_adamw_recipe_fine_tunes_with_adamw_and_resumes_exactly(tiny, tmp_path) -> None:
    weights, _ = tiny
    adamw = recipe_with(tmp_path, "optimizer: adamw")
    spec = blob_set(tmp_path / "set", n=3)
    whole = finetune(weights, spec, tmp_path / "whole", 0, max_steps=3, recipe=adamw)
    last = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(last["optimizer"]["state"].values())))
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [0.002, 0.02]
    assert_cut_and_resumed_is_straight(weights, spec, tmp_path / "cut", adamw, 3, whole.weights)
    a = load_checkpoint(whole.weights)[0].state_dict()
    sgd = load_checkpoint(finetune(weights, spec, tmp_path / "sgd", 0, max_steps=3,
                                   recipe=tiny[1]).weights)[0].state_dict()
    assert any(not torch.equal(a[k], sgd[k]) for k in a)  # another optimiser, other weights


def test_an_amp_recipe_runs_the_networks_in_bfloat16_and_resumes_exactly(
        tiny, tmp_path, bfloat16_cpu, training_convs, monkeypatch) -> None:
    """``amp: true`` in a recipe on a CPU with bfloat16 (forced, so it runs on any CPU): the
    training steps' convolutions run in bfloat16, the weights stay float32, the losses are
    the float32 run's to a percent, and a cut run resumed is the straight run bit for bit; on
    a CPU without it the setting is ignored with a warning."""
    import pfn_napari.train as train_module

    weights, recipe = tiny
    amp = recipe_with(tmp_path, "amp: true")
    spec = blob_set(tmp_path / "set", n=3)
    whole = finetune(weights, spec, tmp_path / "whole", 0, max_steps=3, recipe=amp)
    assert {dtype for dtype, _ in training_convs} == {torch.bfloat16}
    state = load_checkpoint(whole.weights)[0].state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    full = finetune(weights, spec, tmp_path / "float32", 0, max_steps=3, recipe=recipe)

    def losses(folder: Path) -> list[float]:
        with (folder / "log.csv").open(newline="") as fh:
            return [float(r["total"]) for r in csv.DictReader(fh)]

    low, high = losses(tmp_path / "whole"), losses(full.weights.parent)
    assert low != high and low == pytest.approx(high, rel=0.01)
    assert_cut_and_resumed_is_straight(weights, spec, tmp_path / "cut", amp, 3, whole.weights)
    monkeypatch.setattr(train_module, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match=r"train.amp ignored: no native bfloat16 on cpu"):
        finetune(weights, spec, tmp_path / "plain", 0, max_steps=1, recipe=amp)


def test_a_channels_last_recipe_fine_tunes_and_resumes_exactly(tiny, tmp_path,
                                                               training_convs) -> None:
    """``channels_last: true`` in a recipe: the fine-tune runs in that order (this AlexNet's
    dropout then draws its masks in memory order: other masks than the default order's, so
    the losses are another draw, not equal), writes weights that load into a plain model,
    and resumes exactly."""
    weights, recipe = tiny
    fast = recipe_with(tmp_path, "channels_last: true")
    spec = blob_set(tmp_path / "set", n=3)
    whole = finetune(weights, spec, tmp_path / "whole", 0, max_steps=3, recipe=fast)
    assert {order for _, order in training_convs if order is not None} == {True}
    with (tmp_path / "whole" / "log.csv").open(newline="") as fh:
        assert all(math.isfinite(float(r["total"])) for r in csv.DictReader(fh))
    system = load_checkpoint(whole.weights)[0]
    assert all(p.is_contiguous() for p in system.parameters())
    assert_cut_and_resumed_is_straight(weights, spec, tmp_path / "cut", fast, 3, whole.weights)


def test_held_back_images_are_measured_before_and_after(tiny, tmp_path) -> None:
    weights, recipe = tiny
    spec = blob_set(tmp_path / "set", n=15)
    result = finetune(weights, spec, tmp_path / "out", 0, max_steps=1, recipe=recipe)
    meta = load_checkpoint(result.weights)[2]["finetune"]
    # sorted: p0 p1 p10 p11 [p12] p13 p14 p2 p3 [p4] p5 p6 p7 p8 [p9]: every 5th is held back
    assert meta["held_back"] == ["p12", "p4", "p9"]
    assert len(meta["images"]) == 12 and not set(meta["images"]) & set(meta["held_back"])
    assert set(result.before) >= {"APr@0.5", "mIoU"} and set(result.after) >= {"APr@0.5"}
    # each held-back photo holds a blob and a disc, both taught
    assert (result.before["images"], result.before["objects"]) == (3, 6)
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("Measured on 3 images not trained on (every 5th image of the data, held back); "
            "they hold 6 objects: one found or missed moves AP^r@0.5 by about 17 points, so "
            "read a difference of that size as noise:") in card


def test_the_bar_names_each_stage_until_the_end(tiny, tmp_path, capsys) -> None:
    """The bar kept saying 'evaluate before' while it counted the training steps, and it was
    closed before the held-back images were measured again (a minute or two without a word on
    real photos); it now names each stage, the last ones included, and the progress callback
    gets them in order."""
    weights, recipe = tiny
    spec = blob_set(tmp_path / "set", n=15)
    stages: list[str] = []
    finetune(weights, spec, tmp_path / "out", 0, max_steps=3, recipe=recipe, bar=True,
             progress=lambda p: stages.append(p.stage))
    assert stages == ["evaluate before", "train", "train", "train", "evaluate after",
                      "saving", "done"]
    err = capsys.readouterr().err
    lines = err.replace("\r", "\n").splitlines()
    shown = [line.split(":")[1].strip() for line in lines
             if line.startswith("pfn finetune: ")
             and line.split(":")[1].replace(" ", "").isalpha()]
    assert shown[0] == "evaluate before" and shown[-1] == "done"
    assert "train" in shown and "evaluate after" in shown and "saving" in shown
    assert all("loss=" not in line for line in lines if "evaluate before" in line)
    # the bar counts the steps and shows the loss; tqdm prints an update only after its
    # mininterval, so on a fast machine "3/3" first shows with the next stage's name
    assert any("3/3" in line and "loss=" in line for line in lines)


def test_measured_size_counts_the_objects_of_the_taught_classes_only(tmp_path) -> None:
    from pfn_napari.data import open_dataset

    data = open_dataset(blob_set(tmp_path / "set", n=3), "all", None)
    assert measured_size(data, ["blob", "disc"]) == {"images": 3, "objects": 6}
    assert measured_size(data, ["Blob"]) == {"images": 3, "objects": 3}
    assert measured_size(data, ["person"]) == {"images": 3, "objects": 0}
    assert measurement_note({"objects": 4}) == \
        "4 objects: one found or missed moves AP^r@0.5 by about 25 points"
    assert measurement_note({"objects": 1}).startswith("1 object: ")
    assert measurement_note({"APr@0.5": 50.0}) == "" and measurement_note(None) == ""


def test_data_without_a_labelled_object_is_refused_as_by_pfn_train(tiny, tmp_path) -> None:
    weights, recipe = tiny
    img = np.full((32, 32, 3), 100, np.uint8)
    save_correction(tmp_path / "set", img, np.zeros((32, 32), int), {}, "empty")
    with pytest.raises(DatasetError, match=r"none of its 1 images has a labelled object"):
        finetune(weights, correction_spec(tmp_path / "set"), tmp_path / "out", 1,
                 classes=["person"], recipe=recipe)
