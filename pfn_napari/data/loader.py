"""The torch side of the data: samples -> augmented crops -> target tensors, batched.

:class:`TrainingSet` wraps any ``Sequence[Sample]`` (what :func:`pfn_napari.data.open_dataset`
returns). Each item is augmented by a joint transform (``TrainTransform``: scale, crop to
``S x S`` with ``S = 8k + 1``, flip), and its targets are built *after* the augmentation, so
boxes and counts describe what is visible in the crop.

Randomness is a pure function of ``(seed, epoch, index)``: item ``i`` of epoch ``e`` always gets
the same crop, whichever process, worker or resumed run draws it. That is what makes
``pfn train --resume`` continue exactly, and what lets DDP ranks share one recipe.

:class:`EpochSampler` orders the items of an epoch the same way: a permutation seeded by
``(seed, epoch)``, split across ranks like :class:`torch.utils.data.DistributedSampler`, with
an optional number of leading batches skipped (resuming in the middle of an epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..structures import Sample, Targets
from .transforms import copy_paste


class TrainingSet(Dataset):
    """Augmented crops with their stride-8 targets, as tensors.

    Args:
        dataset: a sequence of :class:`~pfn_napari.structures.Sample`.
        transform: ``(sample, rng) -> sample`` (e.g. ``data.transforms.TrainTransform``); it
            must return an ``S x S`` sample so items can be stacked. ``None`` keeps the sample.
        num_classes: C, object classes without background.
        encoding: location encoding, a key of ``config.ENCODING_CHANNELS``.
        seed: base seed; item ``index`` of epoch ``epoch`` draws from
            ``np.random.default_rng([seed, epoch, index])``.
        build_targets: ``(sample, num_classes, encoding) -> Targets``; default
            :func:`pfn_napari.targets.build_targets`.
        copy_paste: probability that an item gets the instances of another augmented item
            pasted on top (:func:`pfn_napari.data.transforms.copy_paste`), before its targets
            are built; the other item and its augmentation are drawn from the item's own
            generator, so resume stays exact.

    Each item is a dict of tensors:

    * ``image``: ``(3, S, S)`` float32, RGB 0..255 (networks normalise inside)
    * ``class_map``: ``(h, w)`` int64, 0..C, 255 ignore (the label map sampled at pixels 8i)
    * ``locations``: ``(L, h, w)`` float32 location targets (normalised coordinates)
    * ``location_weight``: ``(h, w)`` float32, 1 on foreground
    * ``counts``: ``(C,)`` float32 instances of each class visible in the crop
    * ``index``: ``()`` int64, the dataset index (for debugging and tests)
    """

    def __init__(self, dataset: Sequence[Sample],
                 transform: Callable[[Sample, np.random.Generator], Sample] | None,
                 num_classes: int, encoding: str = "box6", seed: int = 0,
                 build_targets: Callable[[Sample, int, str], Targets] | None = None,
                 copy_paste: float = 0.0) -> None:
        self.dataset = dataset
        self.copy_paste = float(copy_paste)
        self.transform = transform
        self.num_classes = int(num_classes)
        self.encoding = encoding
        self.seed = int(seed)
        self.epoch = 0
        if build_targets is None:
            from ..targets import build_targets as default_build_targets

            build_targets = default_build_targets
        self.build_targets = build_targets

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose augmentation the next items get (call before each epoch;
        DataLoader workers copy the dataset when an iterator starts, so this reaches them)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[int(index)]
        rng = self.rng(index)
        if self.transform is not None:
            sample = self.transform(sample, rng)
        if self.copy_paste > 0 and len(self.dataset) > 1 and rng.random() < self.copy_paste:
            other = int(rng.integers(len(self.dataset) - 1))
            other += other >= int(index)  # any item but this one
            source = self.dataset[other]
            if self.transform is not None:
                source = self.transform(source, rng)
            sample = copy_paste(sample, source, rng)
        targets = self.build_targets(sample, self.num_classes, self.encoding)
        image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)  # (3, S, S)
        return {
            "image": image.float(),  # (3, S, S) 0..255
            "class_map": torch.from_numpy(np.asarray(targets.class_map, np.int64)),  # (h, w)
            "locations": torch.from_numpy(np.asarray(targets.locations, np.float32)),  # (L, h, w)
            "location_weight": torch.from_numpy(
                np.asarray(targets.location_weight, np.float32)),  # (h, w)
            "counts": torch.from_numpy(np.asarray(targets.counts, np.float32)),  # (C,)
            "index": torch.tensor(int(index), dtype=torch.int64),
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch: ``image (B, 3, S, S)``, ``class_map (B, h, w)``,
    ``locations (B, L, h, w)``, ``location_weight (B, h, w)``, ``counts (B, C)``, ``index (B,)``.

    Raises ``ValueError`` naming the key when items differ in shape (a transform that does not
    crop to one size)."""
    if not items:
        raise ValueError("collate: empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        shapes = {tuple(it[key].shape) for it in items}
        if len(shapes) > 1:
            raise ValueError(f"collate: items disagree in the shape of {key!r}: {sorted(shapes)} "
                             "(training needs a transform that crops every image to one size)")
        batch[key] = torch.stack([it[key] for it in items])
    return batch


class EpochSampler(Sampler[int]):
    """The indices one rank visits in one epoch, reproducible from ``(seed, epoch)``.

    A thin layer over :class:`torch.utils.data.DistributedSampler` (same permutation, same
    padding and rank split) that can skip the first ``skip`` indices of this rank, so a run
    resumed after ``b`` batches of an epoch continues with batch ``b + 1`` exactly.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        self._inner = DistributedSampler(range(length), num_replicas=num_replicas, rank=rank,
                                         shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch whose permutation to give, and how many of this rank's indices to skip."""
        self._inner.set_epoch(int(epoch))
        self.skip = int(skip)

    def indices(self) -> list[int]:
        """This rank's full list of indices for the current epoch (nothing skipped)."""
        return list(iter(self._inner))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self._inner) - self.skip)


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
