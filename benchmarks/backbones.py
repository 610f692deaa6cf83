"""Speed and memory of each PFN backbone at 375x500 (a typical VOC image), VGG-16 the baseline.

For every variant: forward time of the category net and of the instance net (batch 1, eval,
no grad), one SGD training step of the instance net at batch 2 (images / s), and the peak
memory of that training step (CPU: the peak resident set, ``VmHWM``, of a fresh child process
above its size before the step; CUDA: ``torch.cuda.max_memory_allocated``).
Times are medians, measured in one process so the ratios against VGG-16 share its conditions.

    python benchmarks/backbones.py                # CPU (and CUDA if available)
    python benchmarks/backbones.py --repeats 3 --threads 2 --no-cuda

This is a script, not a test: it takes a minute or more on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from pfn_napari.config import ENCODING_CHANNELS, LossConfig, ModelConfig
from pfn_napari.losses import total_loss
from pfn_napari.model import build_network
from pfn_napari.structures import grid_size

H, W = 375, 500
VARIANTS: dict[str, ModelConfig] = {
    "vgg16": ModelConfig(backbone="vgg16"),
    "alexnet": ModelConfig(backbone="alexnet"),
    "lite0 (os 8)": ModelConfig(backbone="efficientnet_lite0", lite_output_stride=8),
    "lite0 (os 16)": ModelConfig(backbone="efficientnet_lite0", lite_output_stride=16),
    "lite0 (os 32)": ModelConfig(backbone="efficientnet_lite0", lite_output_stride=32),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _batch(cfg: ModelConfig, b: int, device: torch.device) -> dict[str, torch.Tensor]:
    gh, gw = grid_size(H), grid_size(W)
    L = len(ENCODING_CHANNELS[cfg.encoding])
    return {"class_map": torch.randint(0, cfg.num_classes + 1, (b, gh, gw), device=device),
            "locations": torch.rand(b, L, gh, gw, device=device),
            "location_weight": (torch.rand(b, gh, gw, device=device) > 0.5).float(),
            "counts": torch.randint(0, 3, (b, cfg.num_classes), device=device).float()}


def _train_step_fn(cfg: ModelConfig, device: torch.device, batch_size: int = 2):
    net = build_network(cfg, "instance").to(device).train()
    pre, new = net.param_groups()
    opt = torch.optim.SGD([{"params": pre, "lr": 1e-3}, {"params": new, "lr": 1e-2}],
                          momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch_size, 3, H, W, device=device) * 255
    batch = _batch(cfg, batch_size, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = total_loss(net(x), batch, LossConfig(), "instance")
        loss.backward()
        opt.step()

    return step


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``; ``ru_maxrss`` would also do, but Linux
    carries the parent's high-water mark into ``ru_maxrss`` across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB


def child_peak_memory(name: str, threads: int) -> None:
    """Run in a fresh process: peak MB of one training step above the RSS before it."""
    torch.set_num_threads(threads)
    step = _train_step_fn(VARIANTS[name], torch.device("cpu"))
    before = _rss_mb()
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        before = max(before, _peak_rss_mb())
    step()
    print(json.dumps({"peak_mb": _peak_rss_mb() - before}))


def cpu_peak_memory(name: str, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def measure(device: torch.device, repeats: int, threads: int) -> list[dict]:
    rows = []
    x = torch.rand(1, 3, H, W, device=device) * 255
    for name, cfg in VARIANTS.items():
        row: dict = {"variant": name}
        for kind in ("category", "instance"):
            net = build_network(cfg, kind).to(device).eval()
            with torch.no_grad():
                row[f"{kind}_s"] = _median_time(lambda: net(x), repeats, device)
            del net
        step = _train_step_fn(cfg, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = _median_time(step, max(1, repeats - 1), device)
        row["train_img_s"] = 2 / t
        if device.type == "cuda":
            row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            row["peak_mb"] = cpu_peak_memory(name, threads)
        del step
        rows.append(row)
        print(f"  measured {name}: {row}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], device: str) -> str:
    base = rows[0]
    lines = [f"| backbone ({device}, {H}x{W}) | category fwd s | instance fwd s | x VGG (inst.) "
             "| train img/s (batch 2) | x VGG | train peak MB | x VGG |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['category_s']:.3f} | {r['instance_s']:.3f} | "
            f"{r['instance_s'] / base['instance_s']:.2f} | {r['train_img_s']:.3f} | "
            f"{r['train_img_s'] / base['train_img_s']:.2f} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] / base['peak_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_peak_memory(args.child, args.threads)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, {os.cpu_count()} cores")
    if not args.no_cpu:
        print(table(measure(torch.device("cpu"), args.repeats, args.threads), "CPU"))
    if torch.cuda.is_available() and not args.no_cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0)
        print(table(measure(torch.device("cuda"), max(args.repeats, 10), args.threads),
                    f"CUDA {name}"))


if __name__ == "__main__":
    main()
