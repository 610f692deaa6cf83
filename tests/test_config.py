"""Each config section validates itself; PFNConfig.validate adds the cross-section checks."""

from __future__ import annotations

import pytest

import pfn_napari.config as config_module
from pfn_napari.config import (MIGRATIONS, RETIRED, ConfigError, CRFConfig, DataConfig,
                               GroupingConfig, LossConfig, ModelConfig, PFNConfig, TrainConfig,
                               apply_overrides, config_from_dict, config_to_dict,
                               load_config)


@pytest.mark.parametrize("section, message", [
    (DataConfig(crop_size=1), "data.crop_size=1: must be 8k[+]1 .* from 9 to 2049"),
    (DataConfig(crop_size=130), r"data.crop_size=130: must be 8k\+1 so the stride-8 grid"),
    (DataConfig(crop_size=2057), "data.crop_size=2057: must be 8k"),
    (DataConfig(scale_min=1.6), "data.scale_min=1.6 is above data.scale_max=1.5"),
    (DataConfig(scale_min=0.0), r"data.scale_min=0.0: in \(0, 10\]"),
    (DataConfig(scale_min=2, scale_max=11), r"data.scale_max=11: in \(0, 10\]"),
    (DataConfig(num_workers=-1), r"data.num_workers=-1: in \[0, 64\]"),
    (DataConfig(classes=("a", "")), "a class name is empty"),
    (DataConfig(classes=("cat", "Cat")), "a class is named twice"),
    (DataConfig(copy_paste=1.5), r"data.copy_paste=1.5: in \[0, 1\]"),
    (DataConfig(count_targets="visible"), r"data.count_targets='visible': 'whole' or 'share'"),
    (DataConfig(whole_size=640), r"data.whole_size=640: must be 8k\+1 \(e.g. 513, 641\)"),
    (DataConfig(whole_size=1), "data.whole_size=1: must be 8k"),
    (ModelConfig(backbone="resnet"), "model.backbone='resnet': choose one of"),
    (ModelConfig(fusion="mean"), "model.fusion='mean'"),
    (ModelConfig(num_classes=0), r"model.num_classes=0: in \[1, 254\]"),
    (ModelConfig(num_classes=255), r"model.num_classes=255: in \[1, 254\]"),
    (ModelConfig(stream_channels=0), r"model.stream_channels=0: in \[1, 4096\]"),
    (ModelConfig(count_channels=0), r"model.count_channels=0: in \[1, 4096\]"),
    (ModelConfig(count_hidden=0), r"model.count_hidden=0: in \[1, 16384\]"),
    (ModelConfig(dropout=1.0), r"model.dropout=1.0: a probability in \[0, 1\)"),
    (ModelConfig(lite_output_stride=4), "model.lite_output_stride=4: 8, 16 or 32"),
    (ModelConfig(location_unit=-1.0), r"model.location_unit=-1.0: 0 \(normalised\) or > 0 px"),
    (ModelConfig(count_gate=True), "model.count_gate=true needs model.count_head=density"),
    (LossConfig(count_reduction="max"), "loss.count_reduction='max': 'mean' or 'sum'"),
    (LossConfig(loc_weight=-1.0), "loss.loc_weight=-1.0: must be >= 0"),
    (LossConfig(count_weight=-1.0), "loss.count_weight=-1.0: must be >= 0"),
    (LossConfig(seg_weight=-1.0), "loss.seg_weight=-1.0: must be >= 0"),
    (LossConfig(separation_weight=1.0), "loss.separation_weight > 0 needs loss.loc_unit > 0"),
    (LossConfig(separation_weight=-1.0, loc_unit=32.0), "loss.separation_weight=-1.0: must be"),
    (LossConfig(separation_temperature=0.0), "loss.separation_temperature=0.0: must be > 0"),
    (LossConfig(coherence_weight=-0.5), "loss.coherence_weight=-0.5: must be >= 0"),
    (LossConfig(giou_weight=-1.0), "loss.giou_weight=-1.0: must be >= 0"),
    (TrainConfig(separate_schedule="half"), "train.separate_schedule='half': 'split' or 'full'"),
    (TrainConfig(stage="count"), r"train.stage='count': choose one of \('category', 'instance', "
     r"'unified', 'counts'\)"),
    (TrainConfig(batch_size=0), r"train.batch_size=0: in \[1, 4096\]"),
    (TrainConfig(ema=1.0), r"train.ema=1.0: in \[0, 1\) \(0: off, e.g. 0.99\)"),
    (TrainConfig(lr=-1.0), "train.lr=-1.0: must be >= 0"),
    (TrainConfig(lr_new=-0.1), "train.lr_new=-0.1: must be >= 0"),
    (TrainConfig(epochs=0, max_steps=0),
     "train.max_steps=0 and train.epochs=0: nothing to train; set train.max_steps or"),
    (TrainConfig(epochs=-1), "train.epochs=-1: must be >= 0"),
    (TrainConfig(max_steps=-5), "train.max_steps=-5: must be >= 0"),
    (TrainConfig(momentum=1.0), r"train.momentum=1.0: in \[0, 1\)"),
    (TrainConfig(weight_decay=-1e-4), "train.weight_decay=-0.0001: must be >= 0"),
    (TrainConfig(lr_step_epochs=-1), "train.lr_step_epochs=-1: must be >= 0"),
    (TrainConfig(lr_gamma=0.0), r"train.lr_gamma=0.0: in \(0, 1\]"),
    (TrainConfig(optimizer="adam"),
     r"train.optimizer='adam': choose one of \('sgd', 'adamw'\)"),
    (TrainConfig(lr_policy="cosine"),
     r"train.lr_policy='cosine': choose one of \('step', 'poly'\)"),
    (TrainConfig(max_minutes=-1.0), "train.max_minutes=-1.0: must be >= 0"),
    (TrainConfig(grad_clip=-1.0), "train.grad_clip=-1.0: must be >= 0"),
    (TrainConfig(seed=-1), r"train.seed=-1: in \[0, 4294967295\]"),
    (TrainConfig(log_every=-1), "train.log_every=-1: must be >= 0"),
    (TrainConfig(val_every=-1), "train.val_every=-1: must be >= 0"),
    (TrainConfig(checkpoint_every=-1), "train.checkpoint_every=-1: must be >= 0"),
    (TrainConfig(out_dir=" "), "train.out_dir='': name an output folder"),
    (GroupingConfig(method="nope"), "grouping.method='nope': choose one of"),
    (GroupingConfig(scoring="max"), "grouping.scoring='max'"),
    (GroupingConfig(assign="pixel"), "grouping.assign='pixel'"),
    (GroupingConfig(sigma=0.0), r"grouping.sigma=0.0: in \[0.001, 1000\]"),
    (GroupingConfig(sigma=1e-300), r"grouping.sigma=1e-300: in \[0.001, 1000\] \(features"),
    (GroupingConfig(sigma=1e4), r"grouping.sigma=10000.0: in \[0.001, 1000\]"),
    (GroupingConfig(tau=-0.5), r"grouping.tau=-0.5: in \[0, 254\]"),
    (GroupingConfig(n_init=0), r"grouping.n_init=0: in \[1, 100\]"),
    (GroupingConfig(n_init=1_000_000), r"grouping.n_init=1000000: in \[1, 100\]"),
    (GroupingConfig(seed=-3), r"grouping.seed=-3: in \[0, 4294967295\]"),
    (CRFConfig(iterations=-1), r"crf.iterations=-1: in \[0, 100\]"),
    (CRFConfig(iterations=100_000_000), r"crf.iterations=100000000: in \[0, 100\]"),
    (CRFConfig(bi_xy=0.0), r"crf.bi_xy=0.0: in \[0.1, 10000\] px"),
    (CRFConfig(pos_xy=0.0), r"crf.pos_xy=0.0: in \[0.1, 10000\] px"),
    (CRFConfig(bi_rgb=0.0), r"crf.bi_rgb=0.0: in \[0.1, 1000\]"),
    (CRFConfig(bi_w=-1.0), r"crf.bi_w=-1.0: in \[0, 100\]"),
    (CRFConfig(pos_w=101.0), r"crf.pos_w=101.0: in \[0, 100\]"),
])
def test_each_section_names_its_bad_value(section, message) -> None:
    with pytest.raises(ConfigError, match=message):
        section.validate()


def test_the_whole_config_validates_its_sections_and_across_them() -> None:
    PFNConfig().validate()
    with pytest.raises(ConfigError, match="grouping.method='nope'"):
        PFNConfig(grouping=GroupingConfig(method="nope")).validate()
    with pytest.raises(ConfigError, match="data.classes has 20 names but model.num_classes=3"):
        PFNConfig(model=ModelConfig(num_classes=3)).validate()
    with pytest.raises(ConfigError, match="loss.giou_weight > 0 needs the corners of a box: "
                       "model.encoding box6 or box10, not 'center_wh4'"):
        load_config(None, ["model.encoding=center_wh4", "loss.giou_weight=1"])
    load_config(None, ["model.encoding=box10", "loss.giou_weight=1"])
    with pytest.raises(ConfigError, match="grouping.min_size_frac=1.0"):
        load_config(None, ["grouping.min_size_frac=1"])


def test_the_edges_of_each_range_are_accepted() -> None:
    DataConfig(crop_size=9, scale_min=10, scale_max=10, copy_paste=1).validate()
    DataConfig(crop_size=2049, scale_min=0.01, scale_max=0.01).validate()
    TrainConfig(epochs=0, max_steps=1, lr=0.0, lr_new=0.0, momentum=0.0, lr_gamma=1.0).validate()
    TrainConfig(epochs=1, max_steps=0, batch_size=1, seed=2**32 - 1).validate()
    GroupingConfig(sigma=1e-3, n_init=100, tau=0.0).validate()
    GroupingConfig(sigma=1e3, n_init=1).validate()
    CRFConfig(iterations=100, bi_xy=0.1, pos_xy=0.1, bi_rgb=0.1, bi_w=0, pos_w=100).validate()
    for name in ("paper-vgg16", "paper-alexnet", "cpu-lite0", "cpu-demo"):
        load_config(name)


@pytest.mark.parametrize("override, message", [
    ("grouping.sigma=[1", "override 'grouping.sigma=[1': the value is not valid YAML (while "
     "parsing a flow sequence expected ',' or ']', but got '<stream end>')"),
    ("data.classes=!!python/tuple [a]", "override 'data.classes=!!python/tuple [a]': the value "
     "is not valid YAML (could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/tuple')"),
    ("train.lr={a", "override 'train.lr={a': the value is not valid YAML (while parsing a flow "
     "mapping expected ',' or '}', but got '<stream end>')"),
])
def test_broken_yaml_in_an_override_is_one_line(override, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "--set train.lr=.nan: expected a finite number, got nan"),
    ("grouping.sigma=.inf", "--set grouping.sigma=.inf: expected a finite number, got inf"),
    ("train.batch_size=1e400",
     "--set train.batch_size=1e400: expected a finite number, got '1e400'"),
    ("train.batch_size=true", "--set train.batch_size=true: expected a whole number, got True"),
    ("train.batch_size=2.5", "--set train.batch_size=2.5: expected a whole number, got 2.5"),
    ("crf.bi_xy=[1, 2]", "--set crf.bi_xy=[1, 2]: expected a number, got [1, 2]"),
])
def test_numbers_must_be_finite_numbers(override, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_a_wrong_set_value_is_named_as_the_set_item_not_as_the_file(tmp_path) -> None:
    """An override of the wrong type was reported under the config file's name
    (``.../cpu-demo.yaml.loss.loc_weight: expected a number``), though the file held a good
    value; it is named as the ``--set`` item the user typed, for every field and section."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("loss: {loc_weight: 2.0}\n")
    cases = {
        "loss.loc_weight=abc": "--set loss.loc_weight=abc: expected a number, got 'abc'",
        "train.channels_last=maybe": ("--set train.channels_last=maybe: expected true/false, "
                                      "got 'maybe'"),
        "loss.nope=1": "--set loss.nope=1: loss has no field 'nope' (known: loc_weight, ",
        "nope.x=1": "--set nope.x=1: no section 'nope' (known: data, model, loss, train, ",
        "grouping.tau.x=1": "--set grouping.tau.x=1: grouping.tau has no field 'x'",
        "grouping.votes={}": ("--set grouping.votes={}: grouping.votes is a section; set one "
                              "of its fields (iou, min_frac, merge_iou)"),
    }
    for path in (recipe, "cpu-demo", None):
        for override, message in cases.items():
            with pytest.raises(ConfigError) as info:
                load_config(path, [override])
            assert str(info.value).startswith(message), (path, str(info.value))
    # the same check in apply_overrides itself, which scripts call on a stored config
    stored = config_to_dict(PFNConfig())
    for override, message in cases.items():
        with pytest.raises(ConfigError) as info:
            apply_overrides(stored, ["grouping.tau=0.3", override])
        assert str(info.value).startswith(message), str(info.value)
    assert apply_overrides(stored, ["grouping.tau=0.3"])["grouping"]["tau"] == 0.3
    # the good overrides still merge over the file; a bad value in the file keeps its name
    assert load_config(recipe, ["loss.loc_weight=3"]).loss.loc_weight == 3.0
    recipe.write_text("loss: {loc_weight: abc}\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe, ["loss.count_weight=1"])
    assert str(info.value) == f"{recipe}.loss.loc_weight: expected a number, got 'abc'"


@pytest.mark.parametrize("text, shown", [("[1]", "[1]"), ("5", "5"), ("null", "None")])
def test_a_switch_in_a_file_is_true_or_false_not_any_value(tmp_path, text, shown) -> None:
    """A YAML value of a true/false field (``train.channels_last: [1]``) was read as
    ``bool(value)``, so a list or 5 switched it on; only true/false, yes/no, on/off and 0/1
    are."""
    bad = tmp_path / "recipe.yaml"
    bad.write_text(f"train: {{channels_last: {text}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}.train.channels_last: expected true/false, got {shown}"
    for value, want in (("yes", True), ("0", False), ("1", True), ("off", False)):
        bad.write_text(f"train: {{channels_last: {value}}}\n")
        assert load_config(bad).train.channels_last is want


def test_broken_yaml_in_a_config_file_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{bad}: not valid YAML (while parsing a flow sequence")


def test_every_removed_field_names_what_the_code_now_does() -> None:
    removed = {old for old, new in MIGRATIONS.items() if new is None}
    assert removed == set(RETIRED)
    names = set(config_module._flatten(config_to_dict(PFNConfig())))
    assert not removed & names  # a removed field is gone from the dataclasses
    renamed = {new for new in MIGRATIONS.values() if new is not None}
    assert renamed - set(MIGRATIONS) <= names  # every rename ends on a field that exists


def test_an_old_checkpoint_dict_with_a_renamed_and_a_removed_key_loads(monkeypatch) -> None:
    """A stored config as an old version wrote it: ``train.lr_base`` was renamed ``train.lr``
    (a made-up rename, for the test), ``model.pool5_avg`` was removed (off, as the code is)."""
    monkeypatch.setitem(MIGRATIONS, "train.lr_base", "train.lr")
    stored = config_to_dict(PFNConfig())
    stored["train"].pop("lr")
    stored["train"]["lr_base"] = 0.25
    stored["model"]["pool5_avg"] = False
    stored["loss"]["smooth_l1_beta"] = 1.0
    cfg = config_from_dict(stored, "old.pt (stored config)")
    assert cfg.train.lr == 0.25
    assert cfg == PFNConfig(train=TrainConfig(lr=0.25))
    # the same through --set, with the value given as text
    assert load_config(None, ["train.lr_base=0.5", "model.pool5_avg=false"]).train.lr == 0.5


def test_a_removed_field_with_another_value_than_the_code_uses_is_refused() -> None:
    stored = config_to_dict(PFNConfig())
    stored["model"]["pool5_avg"] = True
    with pytest.raises(ConfigError) as info:
        config_from_dict(stored, "old.pt (stored config)")
    assert str(info.value) == ("old.pt (stored config): model.pool5_avg=True is no longer "
                               "supported (the field was removed; the code now always uses False)")
    with pytest.raises(ConfigError, match=r"^--set: loss.seg_top_k=0.5 is no longer"):
        load_config(None, ["loss.seg_top_k=0.5"])


def test_an_old_and_a_new_name_with_different_values_are_refused(monkeypatch) -> None:
    monkeypatch.setitem(MIGRATIONS, "train.lr_base", "train.lr")
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"lr_base": 0.1, "lr": 0.2}})
    assert str(info.value) == ("config: train.lr_base (the old name of train.lr) and train.lr "
                               "are both given, with different values; keep only train.lr")


def test_config_knows_the_grouping_registrys_names() -> None:
    """config.py holds the method and count-source names (no import of grouping/)."""
    from pfn_napari.grouping.methods import GROUPING_METHODS
    from pfn_napari.grouping.votes import COUNT_SOURCES

    assert tuple(config_module.GROUPING_METHOD_NAMES) == tuple(GROUPING_METHODS)
    assert config_module.COUNT_SOURCES == COUNT_SOURCES


def test_a_grouping_method_registered_at_run_time_validates(monkeypatch) -> None:
    """benchmarks/grouping.py registers 'sklearn-spectral': config then accepts the name (before,
    its fixed tuple refused it: "grouping.method='sklearn-spectral': choose one of ...")."""
    from pfn_napari.grouping import GROUPING_METHODS, register_grouping_method
    from pfn_napari.grouping.methods import vote

    monkeypatch.setattr(config_module, "GROUPING_METHOD_NAMES",
                        list(config_module.GROUPING_METHOD_NAMES))
    monkeypatch.setitem(GROUPING_METHODS, "my-method", None)
    with pytest.raises(ConfigError, match="grouping.method='my-method': choose one of"):
        load_config(None, ["grouping.method=my-method"])
    register_grouping_method("my-method", vote)
    assert load_config(None, ["grouping.method=my-method"]).grouping.method == "my-method"
    assert GROUPING_METHODS["my-method"] is vote
    with pytest.raises(ConfigError, match="grouping method name '': a non-empty string"):
        register_grouping_method("", vote)


def test_category_backbone_left_the_code() -> None:
    """model.category_backbone (tried and not kept): '' (both networks on model.backbone) loads
    from an old stored config; another backbone is one line, not a silent Lite0 network."""
    stored = config_to_dict(PFNConfig())
    stored["model"]["category_backbone"] = ""
    assert config_from_dict(stored, "old.pt") == PFNConfig()
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.category_backbone=efficientnet_lite2"])
    assert str(info.value) == ("--set: model.category_backbone='efficientnet_lite2' is no "
                               "longer supported (the field was removed; the code now always "
                               "uses '')")
    assert not hasattr(PFNConfig().model, "backbone_of")


def test_show_classes_are_names_of_the_model_and_reach_the_config_from_overrides():
    """show.classes (empty: every class) takes a YAML list or comma-separated names; a name the
    model does not have is one line naming it and the model's classes."""
    from pfn_napari.config import ShowConfig

    assert load_config(None).show == ShowConfig(()) and ShowConfig().ids(("a", "b")) is None
    cfg = load_config(None, ["show.classes=[person, horse]"])
    assert cfg.show.classes == ("person", "horse")
    assert cfg.show.ids(cfg.data.classes) == (15, 13)  # VOC ids
    assert load_config(None, ["show.classes=person,horse"]).show == cfg.show
    assert load_config(None, ["show.classes=[]"]).show.classes == ()
    assert config_from_dict(config_to_dict(cfg)) == cfg  # the checkpoint's round trip
    with pytest.raises(ConfigError) as info:
        load_config(None, ["show.classes=[person, disc]"])
    assert str(info.value) == ("show.classes: 'disc' is not a class of the model (its classes: "
                               + ", ".join(cfg.data.classes) + "; [] shows every class)")
    with pytest.raises(ConfigError, match=r"show.classes=\['cow', 'cow'\]: a class is named twice"):
        load_config(None, ["show.classes=[cow, cow]"])


def test_the_paper_recipes_take_k_from_the_count_head_and_cpu_demo_from_the_mean() -> None:
    """The paper's recipes stay the paper's (k from the count head); the shipped weights' recipe
    reads the mean of the head and the votes, which won on every held fold of 5-fold
    cross-validation for two of its models (docs/experiments/training.md)."""
    for name in ("paper-vgg16", "paper-alexnet"):
        assert load_config(name).grouping.count_source == "head", name
    demo = load_config("cpu-demo").grouping
    assert (demo.method, demo.count_source) == ("vote", "mean")


def test_a_stage_section_applies_to_its_stage_only_and_set_still_wins(tmp_path) -> None:
    """cpu-demo's ``stages: counts`` gives stage 'counts' its measured settings (150 steps of
    2 photos at 0.001); every other stage keeps the file's own."""
    counts = load_config("cpu-demo", ["train.stage=counts"]).train
    assert (counts.max_steps, counts.batch_size, counts.lr_new, counts.lr) == (150, 2, 0.001, 0.002)
    for stage in ("category", "instance"):
        t = load_config("cpu-demo", [f"train.stage={stage}"]).train
        assert (t.max_steps, t.batch_size, t.lr_new) == (400, 4, 0.01), stage
    assert load_config("cpu-demo").train.batch_size == 4  # the file's stage: category
    mine = load_config("cpu-demo", ["train.stage=counts", "train.batch_size=3"]).train
    assert (mine.batch_size, mine.lr_new) == (3, 0.001)
    own = tmp_path / "own.yaml"
    own.write_text("train: {stage: instance, lr: 0.5}\n"
                   "stages: {instance: {train: {lr: 0.25}, data: {crop_size: 65}}}\n")
    cfg = load_config(own)
    assert (cfg.train.lr, cfg.data.crop_size) == (0.25, 65)
    assert load_config(own, ["train.stage=category"]).train.lr == 0.5


def test_a_stage_section_cannot_be_set_from_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"^override 'stages.counts.train.lr=0.1': stage "
                                          r"sections live in a config file"):
        load_config("cpu-demo", ["stages.counts.train.lr=0.1"])


@pytest.mark.parametrize("text", ["stages: {count: {train: {lr: 0.1}}}\n",
                                  "stages: {counts: {train: 5}}\n",
                                  "stages: [counts]\n"])
def test_a_bad_stage_section_is_one_line_naming_the_file(tmp_path, text: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{bad}: stages: expected sections of settings "
                                          r"under stage names \('category', 'instance', "):
        load_config(bad)
