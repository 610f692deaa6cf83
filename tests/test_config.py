"""Each config section validates itself; PFNConfig.validate adds the cross-section checks."""

from __future__ import annotations

import pytest

from pfn_napari.config import (ConfigError, CRFConfig, DataConfig, GroupingConfig, LossConfig,
                               ModelConfig, PFNConfig, TrainConfig, load_config)


@pytest.mark.parametrize("section, message", [
    (DataConfig(crop_size=8), "data.crop_size=8: at least 9"),
    (DataConfig(copy_paste=1.5), r"data.copy_paste=1.5: in \[0, 1\]"),
    (DataConfig(count_targets="visible"), r"data.count_targets='visible': 'whole' or 'share'"),
    (ModelConfig(backbone="resnet"), "model.backbone='resnet': choose one of"),
    (ModelConfig(fusion="mean"), "model.fusion='mean'"),
    (ModelConfig(num_classes=0), "model.num_classes=0: at least 1"),
    (ModelConfig(lite_output_stride=4), "model.lite_output_stride=4: 8, 16 or 32"),
    (ModelConfig(location_unit=-1.0), r"model.location_unit=-1.0: 0 \(normalised\) or > 0 px"),
    (ModelConfig(count_gate=True), "model.count_gate=true needs model.count_head=density"),
    (LossConfig(count_reduction="max"), "loss.count_reduction='max': 'mean' or 'sum'"),
    (LossConfig(seg_top_k=0.0), r"loss.seg_top_k=0.0: a fraction in \(0, 1\]"),
    (LossConfig(loc_balance=1.5), r"loss.loc_balance=1.5: in \[0, 1\]"),
    (TrainConfig(separate_schedule="half"), "train.separate_schedule='half': 'split' or 'full'"),
    (GroupingConfig(method="nope"), "grouping.method='nope': choose one of"),
    (GroupingConfig(scoring="max"), "grouping.scoring='max'"),
    (GroupingConfig(assign="pixel"), "grouping.assign='pixel'"),
    (GroupingConfig(sigma=0.0), "grouping.sigma=0.0: must be > 0"),
    (GroupingConfig(n_init=0), "grouping.n_init=0: at least 1"),
    (CRFConfig(iterations=-1), "crf.iterations=-1: at least 0"),
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
    with pytest.raises(ConfigError, match="grouping.min_size_frac=1.0"):
        load_config(None, ["grouping.min_size_frac=1"])
