"""The numbers of docs/RESULTS.md, with one command.

    python benchmarks/results.py --budget-min 20 [--pfn-run runs/default-weights] [--out runs/results]
    python benchmarks/results.py --markdown-only --out runs/results   # the page again, from results.json

On the real data in ../shared/data with a fixed split (train: the ``cpu-demo`` data of
``pfn_napari.demo.demo_train_spec``, 300 synthetic shapes and the train splits of COCO-VOC,
Penn-Fudan and the Weizmann horses; val: 17 COCO-VOC + 34 Penn-Fudan + 55 horse images), this

1. trains PFN (EfficientNet-Lite0, recipe ``cpu-demo``, both stages) for ``--budget-min``
   minutes of wall clock (40 % / 60 %) or for ``--pfn-steps CATEGORY INSTANCE`` steps (then,
   with ``--count-steps N``, stage 'counts': the count head alone on whole photos;
   ``--stage2-set KEY=VALUE`` adds a setting to stage 2 alone), or reuses
   a run folder (``--pfn-run``: a ``scripts/train_default_weights.py`` run, or a
   ``demo.train_stages`` one, whose ``counts/final.pt`` is read when it has one);
2. trains torchvision's Mask R-CNN on the same backbone (Lite0 + FPN, same ImageNet weights)
   on the same images for the same wall-clock budget (``benchmarks/maskrcnn_peer.py``);
3. evaluates both with the same evaluator (SDS AP^r, percent) on the same val images, and
   times both per image;
4. runs PFN's upper bounds (ground-truth counts; ground-truth locations on PFN's own
   segmentation, the paper's bound; and "perfect networks", ground-truth classes, counts and
   locations, the bound of the grouping alone) and the paper's cheap ablations (without
   coordinates, size filter, refinement; centers(2) instead of 6-d, whose
   instance stage is retrained from the same stage-1 checkpoint for the same stage-2 budget);
5. writes OUT/results.json and docs/RESULTS.md (tables and the setup; prose states where PFN
   loses from the numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from pfn_napari.config import GroupingConfig, load_config  # noqa: E402
from pfn_napari.data import ConcatDataset, open_dataset  # noqa: E402
from pfn_napari.demo import DEMO_CLASSES, demo_train_spec, find_shared_data, real_specs, train_stages  # noqa: E402
from pfn_napari.evaluate import Evaluator  # noqa: E402
from pfn_napari.grouping import group, oracle_network_output, with_true_locations  # noqa: E402
from pfn_napari.inference import load_model  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def val_set(shared: Path) -> tuple[ConcatDataset, list[str]]:
    """The val images of every real set, and the set each one comes from."""
    parts = {es.name: open_dataset(es.spec, "val", es.classes) for es in real_specs(shared)}
    names = [name for name, part in parts.items() for _ in range(len(part))]
    return ConcatDataset(list(parts.values()), DEMO_CLASSES), names


def train_set(shared: Path, synthetic: int):
    return open_dataset(demo_train_spec(shared, synthetic), "train", DEMO_CLASSES)


def metrics_row(m) -> dict:
    d = m.to_dict(curves=False)
    return {"ap50": d["ap_r"]["0.5"], "ap70": d["ap_r"]["0.7"], "ap_vol": d["ap_r_vol"],
            "miou": d["miou"], "images": d["num_images"], "classes": int(np.sum(m.has_gt))}


def scored(samples, instances, splits: list[str] | None = None) -> dict:
    """The row of ``instances`` (one per sample) against ``samples``; with ``splits`` (the set
    of each sample) also ``row["splits"]``: AP^r@0.5 of each set alone, whose classes are not
    drowned by the rare COCO classes of the pooled mean."""
    ev = Evaluator(DEMO_CLASSES)
    per: dict[str, Evaluator] = {}
    for i, (sample, inst) in enumerate(zip(samples, instances)):
        ev.add(sample, inst)
        if splits is not None:
            per.setdefault(splits[i], Evaluator(DEMO_CLASSES)).add(sample, inst)
    row = metrics_row(ev.result())
    if splits is not None:
        row["splits"] = {name: e.result().ap_r["0.5"] for name, e in per.items()}
    return row


def eval_pfn(predictors, samples, gcfg: GroupingConfig, counts: bool = False,
             splits: list[str] | None = None) -> tuple[dict, float]:
    """AP^r of PFN grouping the networks' cached outputs (one :class:`Predictor` per image,
    image already set); returns (row, grouping s/img). ``splits``: see :func:`scored`."""
    found = []
    spent = 0.0
    for sample, predictor in zip(samples, predictors):
        override = ({c: int(np.sum(sample.instance_classes == c)) for c in range(1, len(DEMO_CLASSES) + 1)}
                    if counts else None)
        t = time.perf_counter()
        found.append(predictor.instances(gcfg, override))
        spent += time.perf_counter() - t
    return scored(samples, found, splits), spent / max(1, len(samples))


def predictors_on(model, samples) -> tuple[list, float]:
    """One :class:`Predictor` per sample, networks run; returns them and network s/img."""
    predictors = []
    t = time.perf_counter()
    for s in samples:
        predictors.append(Predictor(model))
        predictors[-1].set_image(s.image, image_id=s.image_id)
    return predictors, (time.perf_counter() - t) / max(1, len(samples))


def memory_order(args) -> list[str]:
    """The PFN settings of ``--channels-last`` (none without it)."""
    return ["train.channels_last=true"] if args.channels_last else []


def stage2_settings(args) -> dict[str, list[str]]:
    """The settings of PFN's stage 2 alone (``--stage2-set``), as ``train_stages`` takes
    them."""
    return {"instance": list(args.stage2_set)} if args.stage2_set else {}


def centers2_trained(out: Path, shared: Path, args, run: Path) -> Path:
    """Stage 2 retrained with the centers(2) encoding from the PFN run's stage-1 checkpoint,
    for PFN's stage-2 steps (``--pfn-steps``, then ``--count-steps`` of stage 'counts') or
    else its share of the budget (cached in OUT/centers2)."""
    stage = "counts" if args.pfn_steps and args.count_steps else "instance"
    final = out / "centers2" / stage / "final.pt"
    if final.is_file():
        return final
    bounds = (dict(instance_steps=args.pfn_steps[1], counts_steps=args.count_steps or None)
              if args.pfn_steps else
              dict(instance_steps=100000, instance_minutes=0.6 * args.budget_min))
    ckpt, _ = train_stages(out / "centers2", demo_train_spec(shared, args.synthetic),
                           ["model.encoding=centers2", *memory_order(args)],
                           init=run / "category" / "final.pt",
                           stage_overrides=stage2_settings(args), **bounds)
    return ckpt


def maskrcnn_trained(out: Path, shared: Path, args, budget_s: float):
    """Mask R-CNN trained for ``budget_s`` on the PFN training data (cached in OUT/maskrcnn.pt)."""
    from maskrcnn_peer import build_maskrcnn, train_maskrcnn

    torch.manual_seed(args.seed)
    mr = build_maskrcnn(len(DEMO_CLASSES))
    ckpt, info = out / "maskrcnn.pt", out / "maskrcnn_train.json"
    if ckpt.is_file() and info.is_file():
        mr.load_state_dict(torch.load(ckpt, weights_only=True))
        return mr, json.loads(info.read_text())
    train = train_set(shared, args.synthetic)
    stats = train_maskrcnn(mr, [train[i] for i in range(len(train))], budget_s, seed=args.seed,
                           channels_last=args.channels_last)
    torch.save(mr.state_dict(), out / ".maskrcnn.pt.tmp")
    (out / ".maskrcnn.pt.tmp").replace(ckpt)
    info.write_text(json.dumps(stats))
    return mr, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=20.0, help="training wall clock per system")
    ap.add_argument("--pfn-run", default=None, help="reuse a scripts/train_default_weights.py run folder")
    ap.add_argument("--extra-pfn-run", default=None,
                    help="another train_default_weights.py run folder, or a weights file (e.g. "
                         "weights/pfn-lite0-voc.pt), to list beside, marked as not budget-matched")
    ap.add_argument("--conditions", default="",
                    help="a sentence on the conditions of the run, printed under the machine line")
    ap.add_argument("--pfn-steps", type=int, nargs=2, metavar=("CATEGORY", "INSTANCE"),
                    default=None,
                    help="train PFN's two stages for these many steps instead of 40 %% / 60 %% of "
                         "--budget-min (the recipe's learning rate is constant, so the steps a "
                         "budget gave make the same run on a machine that is not idle)")
    ap.add_argument("--count-steps", type=int, default=0,
                    help="with --pfn-steps: then train stage 'counts' (the count head alone on "
                         "whole photos) for these many steps")
    ap.add_argument("--channels-last", action="store_true",
                    help="train PFN (every stage, train.channels_last) and Mask R-CNN with their "
                         "weights in channels-last memory order (faster convolutions on the CPU)")
    ap.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of PFN's stage 2 only (its instance network; also the "
                         "centers(2) ablation's), e.g. train.grad_clip=5; repeatable")
    ap.add_argument("--synthetic", type=int, default=300)
    ap.add_argument("--out", default="runs/results")
    ap.add_argument("--results-md", default=str(REPO / "docs" / "RESULTS.md"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-centers2", action="store_true")
    ap.add_argument("--only", choices=("maskrcnn", "centers2"), default=None,
                    help="run one expensive part alone (its result is cached in OUT and reused), "
                         "e.g. in parallel with scripts/train_default_weights.py")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite --results-md from OUT/results.json (no training, no evaluation)")
    args = ap.parse_args(argv)
    if args.count_steps and not args.pfn_steps:
        ap.error("--count-steps needs --pfn-steps (the stages are bounded by steps, not minutes)")
    if args.markdown_only:
        done = Path(args.out) / "results.json"
        if not done.is_file():
            print(f"benchmarks/results.py: {done} not found (run without --markdown-only first)",
                  file=sys.stderr)
            return 2
        res = json.loads(done.read_text())
        stored = res.get("argv", [])  # the run's own arguments say what its page says
        write_markdown(Path(args.results_md), res, ap.parse_args(stored), stored)
        print(f"wrote {args.results_md} from {done}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = find_shared_data()
    if shared is None:
        print("benchmarks/results.py: ../shared/data not found (set PFN_SHARED_DATA)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    budget_s = 60 * args.budget_min
    if args.only == "maskrcnn":
        maskrcnn_trained(out, shared, args, budget_s)
        return 0
    if args.only == "centers2":
        centers2_trained(out, shared, args, Path(args.pfn_run or out / "pfn"))
        return 0
    res: dict = {"budget_min": args.budget_min, "seed": args.seed, "argv": sys.argv[1:],
                 "machine": {"cpu": platform.processor() or platform.machine(),
                             "cores": torch.get_num_threads(), "torch": torch.__version__,
                             "python": platform.python_version()}}

    # 1. PFN
    if args.pfn_run:
        run = Path(args.pfn_run)
        ckpt = run / "counts" / "final.pt"  # a run with stage 'counts', else its stage 2
        if not ckpt.is_file():
            ckpt = run / "instance" / "final.pt"
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        pfn_minutes = summary.get("train_minutes")
    else:
        run = out / "pfn"
        t0 = time.perf_counter()
        steps = args.pfn_steps or (100000, 100000)
        minutes = (None, None) if args.pfn_steps else (0.4 * args.budget_min,
                                                       0.6 * args.budget_min)
        ckpt, _ = train_stages(run, demo_train_spec(shared, args.synthetic), memory_order(args),
                               category_steps=steps[0], instance_steps=steps[1],
                               counts_steps=args.count_steps or None,
                               category_minutes=minutes[0], instance_minutes=minutes[1],
                               stage_overrides=stage2_settings(args))
        pfn_minutes = (time.perf_counter() - t0) / 60
        (run / "summary.json").write_text(json.dumps({"train_minutes": round(pfn_minutes, 1)}))
    res["pfn_train_minutes"] = pfn_minutes
    model = load_model(ckpt, "cpu")
    val, splits = val_set(shared)
    res["data"] = {"train": len(train_set(shared, args.synthetic)),
                   "val": {name: splits.count(name) for name in dict.fromkeys(splits)}}
    samples = [val[i] for i in range(len(val))]
    print(f"val: {len(samples)} images, {sum(s.num_instances for s in samples)} instances")
    nets, net_time = predictors_on(model, samples)
    # the recipe's test-time settings (as a run trained today stores them; a reused run folder
    # may hold older ones)
    g = load_config("cpu-demo").grouping
    rows: dict[str, dict] = {}
    timing: dict[str, float] = {"pfn_network_s": net_time}
    for name, gcfg in [("PFN, vote grouping", replace(g, method="vote")),
                       ("PFN, spectral grouping (paper)", replace(g, method="spectral"))]:
        rows[name], timing[name] = eval_pfn(nets, samples, gcfg, splits=splits)
        print(name, rows[name], f"grouping {timing[name]:.3f} s/img")
    if args.extra_pfn_run:
        extra_run = Path(args.extra_pfn_run)
        if extra_run.is_file():  # a weights file, e.g. the shipped one: its meta has the minutes
            m3 = load_model(extra_run, "cpu")
            minutes = m3.meta.get("train_minutes")
        else:
            summary = extra_run / "summary.json"
            minutes = (json.loads(summary.read_text()).get("train_minutes")
                       if summary.is_file() else None)
            m3 = load_model(extra_run / "instance" / "final.pt", "cpu")
        nets3, timing["extra_network_s"] = predictors_on(m3, samples)
        for method in ("vote", "spectral"):
            name = f"PFN, {method}, {extra_run.name} ({minutes} min, not budget-matched)"
            rows[name], timing[name] = eval_pfn(nets3, samples,  # its own grouping defaults
                                                replace(m3.config.grouping, method=method),
                                                splits=splits)
            print(name, rows[name])
    res["pfn"] = rows

    # 2. Mask R-CNN, same data, same budget
    mr, stats = maskrcnn_trained(out, shared, args, 60 * (pfn_minutes or args.budget_min))
    from maskrcnn_peer import predict_maskrcnn

    t = time.perf_counter()
    found = [predict_maskrcnn(mr, s.image, s.image_id) for s in samples]
    timing["maskrcnn_s"] = (time.perf_counter() - t) / len(samples)
    res["maskrcnn"] = {"row": scored(samples, found, splits), "train": stats}
    print("Mask R-CNN", res["maskrcnn"])

    # 3. upper bounds and ablations (same PFN model)
    base = replace(g, method="spectral")
    abl = {
        "PFN (spectral)": rows["PFN, spectral grouping (paper)"],  # computed above
        "w/o coordinates": eval_pfn(nets, samples, replace(base, use_coords=False))[0],
        "w/o size filter": eval_pfn(nets, samples, replace(base, size_filter=False))[0],
        "w/o refinement": eval_pfn(nets, samples, replace(base, refine=False))[0],
        "w/o refinement and size filter": eval_pfn(nets, samples,
                                                   replace(base, refine=False, size_filter=False))[0],
    }
    bounds = {
        "PFN + ground-truth counts (spectral)": eval_pfn(nets, samples, base, counts=True)[0],
        "PFN + ground-truth counts (vote)": eval_pfn(nets, samples, replace(g, method="vote"),
                                                     counts=True)[0],
    }
    truth_nets = []
    for s, predictor in zip(samples, nets):
        truth = Predictor(model)
        truth.set_network_output(with_true_locations(predictor.net, s.instance_map),
                                 predictor.image, predictor.image_id)
        truth_nets.append(truth)
    for method in ("vote", "spectral"):
        name = f"PFN + ground-truth locations on its own segmentation (paper's bound, {method})"
        bounds[name] = eval_pfn(truth_nets, samples, replace(g, method=method))[0]
    for method in ("vote", "spectral"):
        ev = Evaluator(DEMO_CLASSES)
        for s in samples:
            net = oracle_network_output(s, len(DEMO_CLASSES), model.encoding, full_classes=True)
            ev.add(s, group(net, replace(g, method=method)))
        bounds[f"perfect networks: ground-truth classes, counts, locations ({method})"] = \
            metrics_row(ev.result())
    if not args.skip_centers2:
        m2 = load_model(centers2_trained(out, shared, args, run), "cpu")
        nets2, _ = predictors_on(m2, samples)
        abl["centers (2) instead of 6-d (retrained stage 2)"] = eval_pfn(nets2, samples, base)[0]
    res["ablations"], res["bounds"], res["timing"] = abl, bounds, timing
    (out / "results.json").write_text(json.dumps(res, indent=1))
    write_markdown(Path(args.results_md), res, args)
    print(f"wrote {out / 'results.json'} and {args.results_md}")
    return 0


#: What each upper-bound row of docs/RESULTS.md swaps in (the paper's two bounds keep PFN's map).
UPPER_BOUNDS_NOTE = (
    "The paper's two bounds keep PFN's own category map: \"PFN + ground-truth counts\" is its "
    "\"upperbound instnum\", \"PFN + ground-truth locations on its own segmentation\" its "
    "\"upperbound instloc\" (`pfn evaluate CKPT --oracle-locations`: the true location of every "
    "cell inside a ground-truth instance, clustered on the predicted, refined class map with the "
    "predicted counts). \"Perfect networks\" (`pfn evaluate --oracle-locations`) also takes the "
    "ground-truth classes and counts: it bounds the grouping step alone, not a row of the paper.")


def f1(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def split_table(pfn_rows: dict, peer: dict, best: dict, level: float = 0.5) -> list[str]:
    """Markdown lines: AP^r@0.5 of each system on each val set alone, and who leads on each at
    the same budget (``best``: the budget-matched PFN row); none for an older results.json."""
    names = list(peer.get("splits", {}))
    if not names:
        return []
    lines = [f"The pooled AP^r above is the mean over the {peer.get('classes', 'several')} "
             "classes of the val photos, most of them COCO classes with one to three val "
             "instances each. A model that shows only some classes scores 0 on the others: "
             "the shipped weights show person and horse (`show.classes`), so their pooled and "
             "coco-voc numbers count every other class as missed. Each set alone (AP^r@0.5 "
             "over its own classes):", "",
             "| system | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in [*pfn_rows.items(), ("Mask R-CNN, Lite0-FPN (torchvision)", peer)]:
        lines.append(f"| {name} | " + " | ".join(f1(row.get("splits", {}).get(n)) for n in names)
                     + " |")
    leads = [f"{n}: {lead(best.get('splits', {}).get(n), peer['splits'][n], level)}"
             for n in names]
    return lines + ["", "Each set alone, at the same budget: " + "; ".join(leads) + ".", ""]


def lead(pfn: float | None, peer: float | None, level: float = 0.5) -> str:
    """Who is ahead and by how much (closer than ``level``: level), with both values."""
    a, b = pfn or 0.0, peer or 0.0
    if abs(a - b) < level:
        return f"level ({a:.1f} and {b:.1f})"
    return f"{'PFN' if a > b else 'Mask R-CNN'} ahead by {abs(a - b):.1f} ({a:.1f} against {b:.1f})"


def standing(pfn: dict, peer: dict, level: float = 0.5) -> str:
    """:func:`lead` on each headline metric, as one sentence."""
    return "; ".join(f"{label}: {lead(pfn[key], peer[key], level)}" for key, label in
                     (("ap50", "AP^r@0.5"), ("ap_vol", "AP^r_vol"), ("miou", "mIoU"))) + "."


def write_markdown(path: Path, res: dict, args, argv: list[str] | None = None) -> None:
    """docs/RESULTS.md from ``res``; ``argv``: the command's arguments (default: this one's)."""
    argv = sys.argv[1:] if argv is None else argv
    t = res["timing"]
    pfn_rows = res["pfn"]
    mr = res["maskrcnn"]["row"]
    lines = [
        "# Results",
        "",
        "Every number below was produced by one command on this project's CI machine " + (
            f"(PFN's training reused from the run folder {args.pfn_run}; then Mask R-CNN for the "
            "same wall clock and the ablations, one after the other):" if args.pfn_run else
            "(PFN, then Mask R-CNN for the same wall clock, then the ablations: one after the "
            "other in one process, so each trains with the machine to itself):"),
        "",
        "```bash",
        "python benchmarks/results.py " + " ".join(shlex.quote(a) for a in argv),
        "```",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} torch threads (2 cores), no GPU; "
        f"torch {res['machine']['torch']}, Python {res['machine']['python']}. Seed {res['seed']}.",
        *([args.conditions, ""] if args.conditions else []),
        f"Data (../shared/data, fixed split): train = {res['data']['train']} images (the `cpu-demo` "
        f"data of `pfn_napari.demo.demo_train_spec`: {args.synthetic} synthetic shapes and the train "
        "splits of the real sets, COCO-VOC repeated as in the recipe); val = "
        + " + ".join(f"{n} {k}" for k, n in res["data"]["val"].items()) + " images. "
        "23 classes (20 VOC + 3 shapes); AP^r is the SDS protocol (docs/evaluation.md), "
        "averaged over the classes present in val. These are a few hundred images, for checking that "
        "every part works on real photos; they do not reproduce the paper's VOC numbers.",
        "",
        "## PFN beside Mask R-CNN (same backbone family, data, budget, evaluator)",
        "",
        "| system | training (CPU wall clock) | AP^r@0.5 | AP^r@0.7 | AP^r_vol | mIoU | latency / image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    pm = res.get("pfn_train_minutes")
    for name, row in pfn_rows.items():
        gs = t.get(name, 0.0)
        net_s = t.get("extra_network_s", 0.0) if "not budget-matched" in name else t["pfn_network_s"]
        minutes = "see name" if "not budget-matched" in name else f"{f1(pm)} min"
        lines.append(f"| {name} | {minutes} | {f1(row['ap50'])} | {f1(row['ap70'])} | "
                     f"{f1(row['ap_vol'])} | {f1(row['miou'])} | {net_s + gs:.3f} s "
                     f"(grouping {100 * gs / (net_s + gs):.0f}%) |")
    st = res["maskrcnn"]["train"]
    lines.append(f"| Mask R-CNN, Lite0-FPN (torchvision) | {st['seconds'] / 60:.1f} min ({st['steps']} steps) | "
                 f"{f1(mr['ap50'])} | {f1(mr['ap70'])} | {f1(mr['ap_vol'])} | {f1(mr['miou'])} | "
                 f"{t['maskrcnn_s']:.3f} s |")
    best = max((r for n, r in pfn_rows.items() if "not budget-matched" not in n),
               key=lambda r: r["ap50"] or 0)
    lines += ["", "Where PFN stands, at the same budget: " + standing(best, mr)
        + f" PFN's grouping costs {100 * t.get('PFN, spectral grouping (paper)', 0) / (t['pfn_network_s'] + t.get('PFN, spectral grouping (paper)', 0)):.0f}% "
        "of its time with the paper's spectral clustering"
        f" and {100 * t.get('PFN, vote grouping', 0) / (t['pfn_network_s'] + t.get('PFN, vote grouping', 0)):.0f}% with the vote grouping.",
        "", *split_table(pfn_rows, mr, best),
        "## Upper bounds (same val images)", "", UPPER_BOUNDS_NOTE, "",
        "| | AP^r@0.5 | AP^r@0.7 | AP^r_vol |", "|---|---:|---:|---:|"]
    for name, row in res["bounds"].items():
        lines.append(f"| {name} | {f1(row['ap50'])} | {f1(row['ap70'])} | {f1(row['ap_vol'])} |")
    base = res["ablations"]["PFN (spectral)"]
    lines += ["", "## The paper's cheap ablations (deltas against PFN with spectral grouping)", "",
              "| | AP^r@0.5 | delta | AP^r@0.7 | AP^r_vol | delta |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in res["ablations"].items():
        d50 = (row["ap50"] or 0) - (base["ap50"] or 0)
        dv = (row["ap_vol"] or 0) - (base["ap_vol"] or 0)
        lines.append(f"| {name} | {f1(row['ap50'])} | {d50:+.1f} | {f1(row['ap70'])} | "
                     f"{f1(row['ap_vol'])} | {dv:+.1f} |")
    lines += ["", f"Raw numbers: `{args.out}/results.json` after the command. The oracle study "
              "of the grouping (noise levels, grid resolution, sigma) is in docs/grouping.md; GPU "
              "numbers: none (no GPU was lent to the session that ran this).", ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
