"""What reading the instance numbers off the votes costs (``grouping.count_source``).

One class mask of about N cells (four touching instances, the quadrants of a square, with
ground-truth box6 locations plus Gaussian noise of std 0.02), grouped from scratch by the
``vote`` method. The count head is told 1.4; the votes find 4, so ``count_source='mean'``
clusters into round(2.7) = 3. The baseline is ``count_source='head'`` with the head's count set
to that same 3, so both cluster the same ``k`` and the difference is the vote count alone.
Reported: median wall time of ``--repeat`` runs of each, and their ratio in the same process.

    python benchmarks/count_source.py
    python benchmarks/count_source.py --sizes 500 3000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.config import GroupingConfig  # noqa: E402
from pfn_napari.grouping import Grouper, oracle_network_output  # noqa: E402
from pfn_napari.structures import Sample  # noqa: E402


def quadrants(cells: int) -> Sample:
    """A square of about ``cells`` stride-8 cells split into four touching instances."""
    side = int(np.sqrt(cells)) * 8
    half = side // 2
    class_map = np.ones((side, side), np.uint8)
    instance_map = np.zeros((side, side), np.int32)
    instance_map[:half, :half], instance_map[:half, half:] = 1, 2
    instance_map[half:, :half], instance_map[half:, half:] = 3, 4
    return Sample(np.zeros((side, side, 3), np.uint8), class_map, instance_map,
                  np.ones(4, np.int64), "quadrants")


def timed(net, cfg: GroupingConfig, repeat: int) -> tuple[float, int]:
    """Median seconds of a from-scratch grouping (a new Grouper each time) and the k used."""
    times, k = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = Grouper(net).run(cfg)
        times.append(time.perf_counter() - t0)
        k = result.cluster_counts[1]
    return statistics.median(times), k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1500, 3000, 20000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print("| cells | k | head told k (s) | mean (s) | ratio mean / head |")
    print("|---:|---:|---:|---:|---:|")
    for cells in args.sizes:
        net = oracle_network_output(quadrants(cells), num_classes=1, noise=0.02, rng=0,
                                    full_classes=True)
        n = int((np.asarray(net.class_probs).argmax(0) == 1).sum())
        net.counts[:] = 1.4
        mean, k = timed(net, GroupingConfig(method="vote", count_source="mean"), args.repeat)
        net.counts[:] = k
        head, k_head = timed(net, GroupingConfig(method="vote", count_source="head"), args.repeat)
        assert k_head == k
        print(f"| {n} | {k} | {head:.3f} | {mean:.3f} | {mean / head:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
