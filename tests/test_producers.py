"""``pfn_napari.producers``: the evaluation loop and what it evaluates, in the library."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.data import open_dataset
from pfn_napari.errors import PFNError
from pfn_napari.producers import (class_lut, evaluate_dataset, model_producer, oracle_producer)
from pfn_napari.structures import Instances


class FakePredictor:
    """A predictor with the model's classes ``names``: one instance per class asked for by the
    count override (or one of the first model class), and a class map of the first class."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.class_names, self.num_classes = names, len(names)
        self.overrides: list[dict | None] = []
        self.model = type("M", (), {"path": "fake.pt"})()

    def set_image(self, image, name="image", image_id=""):
        self.image_size, self.image_id = image.shape[:2], image_id

    def instances(self, grouping=None, count_override=None):
        self.overrides.append(count_override)
        h, w = self.image_size
        masks = np.zeros((self.num_classes, h, w), bool)
        for k in range(self.num_classes):
            masks[k, k::self.num_classes] = True  # (N, H, W): one row stripe per class
        return Instances(masks, np.arange(1, self.num_classes + 1), np.ones(self.num_classes),
                         self.image_id)

    def class_map(self):
        return np.ones(self.image_size, np.uint8)  # (H, W): model class 1 everywhere


def test_class_lut_maps_model_ids_to_data_ids():
    lut = class_lut(("cat", "disc", "triangle"), ("disc", "square", "triangle"))
    assert lut.tolist() == [0, 0, 1, 3]


def test_oracle_counts_are_given_in_the_models_class_ids():
    """The model lists the classes in another order than the data: the true number of each
    class reaches the model's own id (a data id used as a model id would give AP^r 0)."""
    data = open_dataset("synthetic:2@1", "val")  # disc, square, triangle
    predictor = FakePredictor(("cat", "triangle", "disc", "square"))
    produce = model_producer(predictor, data, oracle_counts=True)
    sample = data[0]
    inst, semantic = produce(0, sample)
    truth = {name: int(np.sum(sample.instance_classes == data.classes.index(name) + 1))
             for name in data.classes}
    assert predictor.overrides[-1] == {2: truth["triangle"], 3: truth["disc"], 4: truth["square"]}
    assert sum(truth.values()) == len(sample.instance_classes) == 4
    # the model's "cat" (unknown to the data) is dropped; the others renumbered to data ids
    assert inst.classes.tolist() == [3, 1, 2]
    assert semantic.max() == 0  # model class 1 (cat) is background for this data


def test_model_producer_refuses_a_model_that_knows_none_of_the_classes():
    data = open_dataset("synthetic:1@1", "val")
    with pytest.raises(PFNError, match=r"fake\.pt: the model's classes \(cat, dog\) share none"):
        model_producer(FakePredictor(("cat", "dog")), data)


def test_evaluate_dataset_feeds_every_evaluator_and_the_callback():
    from pfn_napari.evaluate import Evaluator

    data = open_dataset("synthetic:3@1", "val")
    other = Evaluator(data.classes)
    seen = []
    metrics = evaluate_dataset(data, oracle_producer(), progress=False, also=[other], limit=2,
                               on_image=lambda i, s, inst: seen.append((i, len(inst))))
    assert metrics.num_images == other.result().num_images == 2
    assert seen == [(0, data[0].num_instances), (1, data[1].num_instances)]
    assert metrics.ap_r["0.5"] == pytest.approx(100.0)
