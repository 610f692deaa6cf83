"""Rank 20-minute PFN recipes over several seeds, under the protocol, with one command.

One 20-minute run cannot rank recipes that differ by a few points: between seeds the
Penn-Fudan pedestrians move by 10 to 40 points (docs/experiments/training.md). This script
trains, for every seed, the chain of each arm (stage 1, stage 2 and stage 'counts' of the
``cpu-demo`` recipe, bounded by steps, so a run does not depend on the machine's load) and
reads each arm against the first (the baseline) with the protocol of
``scripts/tune_grouping.py --against`` (5-fold cross-validation over the labelled photos no
network was trained on, each file's count source chosen per fold between the head's and the
mean). An arm replaces the baseline when its held objective, averaged over the seeds, is
higher on every fold: the rule the studies of docs/experiments/training.md fixed before their
runs.

    python benchmarks/seed_study.py --seeds 0 1 2 --arm recipe \\
        --arm clip5 instance:train.grad_clip=5 --out runs/seed-study --cache runs/seed-study/cv.pkl

An arm is a name and its settings, each ``STAGE:KEY=VALUE`` (a setting of one stage:
category, instance or counts) or ``KEY=VALUE`` (every stage). Arms without category settings
share each seed's stage-1 network, and arms with settings for stage 'counts' alone share its
stage-2 network too (their ``instance`` folder is a link). A finished stage (its ``final.pt``)
is not trained again, so a study stopped half-way goes on where it stopped; each arm's folder
records its settings (``OUT/seedN/NAME/arm.json``), and a later study that gives the name other
settings is refused rather than handed the old chain. ``OUT/study.json`` keeps every arm's
readings per seed: a study of seed 2 alone adds to the one of seeds 0 and 1 of the same arm,
and the verdict there is over every seed read so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from pfn_napari.demo import demo_train_spec, find_shared_data, train_stages  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.output import (FolderBusy, atomic_write, atomic_write_text,  # noqa: E402
                               lock_file, release_lock_file)

STAGES = ("category", "instance", "counts")


def parse_arm(words: list[str]) -> tuple[str, dict[str, list[str]]]:
    """``[NAME, SETTING...]`` -> ``(NAME, {stage: [KEY=VALUE, ...]})``; a setting without a
    stage goes to every stage."""
    name, settings = words[0], {stage: [] for stage in STAGES}
    if "=" in name or ":" in name:
        raise PFNError(f"--arm {' '.join(words)}: the first word names the arm (e.g. --arm "
                       "clip5 instance:train.grad_clip=5)")
    for word in words[1:]:
        stage, _, setting = word.partition(":") if ":" in word.split("=", 1)[0] else \
            ("", "", word)
        if stage and stage not in STAGES:
            raise PFNError(f"--arm {name}: {word!r}: the stage must be one of {STAGES}")
        if "=" not in setting:
            raise PFNError(f"--arm {name}: {word!r}: expected [STAGE:]KEY=VALUE")
        for target in ([stage] if stage else STAGES):
            settings[target].append(setting)
    return name, settings


def seed_verdict(per_seed: dict[int, tuple[list[float], list[float]]]
                 ) -> tuple[list[float], list[float], bool]:
    """The held objective per fold averaged over the seeds, ``(arm, baseline)``, and whether
    the arm is higher on every fold. ``per_seed``: ``{seed: (arm per fold, baseline per
    fold)}``."""
    arm = np.mean([v[0] for v in per_seed.values()], axis=0)
    base = np.mean([v[1] for v in per_seed.values()], axis=0)
    return [float(x) for x in arm], [float(x) for x in base], bool(np.all(arm > base))


def arm_record(settings: dict[str, list[str]], args) -> dict:
    """What makes an arm's chain: its settings and the study's steps and data."""
    return {"settings": settings, "steps": list(args.steps), "count_steps": args.count_steps,
            "channels_last": args.channels_last, "synthetic": args.synthetic}


def claim_arm_folder(folder: Path, name: str, record: dict) -> None:
    """``folder/arm.json`` says which chain ``folder`` holds: written the first time; a record
    that differs is refused, since the finished stages in ``folder`` would be reused."""
    path = folder / "arm.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have != record:
            changed = ", ".join(f"{k}: {have.get(k)} there, {v} now" for k, v in record.items()
                                if have.get(k) != v)
            raise PFNError(f"--arm {name}: {folder} holds a chain of other settings ({changed}); "
                           "name the arm differently, or remove the folder to train it again")
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))


def share_stage(folder: Path, shared: Path) -> None:
    """``folder`` (an arm's stage folder) becomes a link to ``shared``, the same stage of an
    arm with the same settings up to it, so that stage is reused, not trained again; a folder
    of its own is left alone."""
    if folder.is_symlink() or folder.exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(shared.resolve(), target_is_directory=True)


def chain(out: Path, spec: str, seed: int, settings: dict[str, list[str]], args,
          category: Path | None) -> Path:
    """One arm's chain for ``seed`` in ``out`` (stage 1 from ``category`` when given)."""
    common = [f"train.seed={seed}"] + (["train.channels_last=true"] if args.channels_last else [])
    ckpt, _ = train_stages(out, spec, common, category_steps=args.steps[0],
                           instance_steps=args.steps[1], counts_steps=args.count_steps or None,
                           init=category, stage_overrides=settings, progress=False, reuse=True)
    return ckpt


def read_pair(new: Path, old: Path, shared: Path, cache: dict, save, folds: int):
    """``(new per fold, old per fold, pooled table)`` of two weights files under the protocol
    of ``scripts/tune_grouping.py --weights NEW --against OLD --folds K --tau 0.5
    --count-source head mean``: the same settings (from NEW's config) and photos for both,
    each file's setting chosen per fold on the other folds."""
    import tune_grouping as tg
    from pfn_napari.checkpoint import config_of, read_checkpoint
    from pfn_napari.predictor import Predictor

    args = tg.parser().parse_args(["--weights", str(new), "--folds", str(folds), "--tau", "0.5",
                                   "--count-source", "head", "mean"])
    settings, _, _ = tg.fold_settings(args, config_of(read_checkpoint(new), new))
    tables, sources = [], []
    for path in (new, old):
        predictor = Predictor(str(path))
        sets = tg.pooled_sets(shared, tuple(predictor.class_names), args.limit)
        table, sources, _ = tg.score_pool(predictor, settings, sets, cache,
                                          tg.file_digest(path), save)
        tables.append(table)
    fold_of = tg.stratified_folds(sources, args.folds, args.seed)
    held_new, held_old, _ = tg.weights_verdict(tables[0], tables[1], sources, fold_of,
                                               args.objective)
    pooled = {str(p): tg.pooled_held(t, tg.chosen_per_fold(t, sources, fold_of, args.objective),
                                     fold_of) for p, t in zip((new, old), tables)}
    metrics = [tg.photo_metrics(photos, sources) for photos in pooled.values()]
    return held_new, held_old, tg.summary_table(pooled, sources), metrics


#: The pooled numbers averaged over the seeds: (photo_metrics key, label, digits).
MEAN_COLUMNS = (("coco", "COCO AP", 1), ("pennfudan", "Penn-Fudan AP", 1),
                ("horses", "horses AP", 1), ("mean", "mean AP", 1),
                ("precision", "precision %", 1), ("false", "false / photo", 2))


def seed_means(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Each :data:`MEAN_COLUMNS` number averaged over the seeds' pooled metrics."""
    return {key: float(np.mean([m.get(key, np.nan) for m in metrics]))
            for key, _, _ in MEAN_COLUMNS}


def arm_entry(record: dict, baseline: str, per_seed: dict[str, list], pooled: dict[str, list]
              ) -> dict:
    """One arm's entry of ``study.json``: its record, the readings per seed (``{seed: (arm per
    fold, baseline per fold)}``, ``{seed: (arm pooled metrics, baseline's)}``) and the verdict
    and pooled means over all of them."""
    arm_mean, base_mean, wins = seed_verdict(per_seed)
    return {**record, "baseline": baseline, "per_seed": per_seed, "pooled_per_seed": pooled,
            "seeds": sorted(per_seed, key=int), "mean": arm_mean, "baseline_mean": base_mean,
            "wins": wins, "pooled_seed_means": {
                "arm": seed_means([v[0] for v in pooled.values()]),
                "baseline": seed_means([v[1] for v in pooled.values()])}}


def write_study(path: Path, report: dict) -> dict:
    """Merge ``report`` into the study file ``path`` (:func:`merge_study`) under a lock, so two
    studies of other seeds that end together both land; returns what was written."""
    import time

    lock = path.with_name(path.name + ".lock")
    for _ in range(600):
        try:
            fh = lock_file(lock)
            break
        except FolderBusy:
            time.sleep(0.1)
    else:
        raise PFNError(f"{lock}: another study held it for a minute; its pid is in the file")
    try:
        merged = merge_study(json.loads(path.read_text()) if path.is_file() else {}, report)
        atomic_write_text(path, json.dumps(merged, indent=1))
    finally:
        if fh is not None:
            release_lock_file(lock, fh)
    return merged


def merge_study(old: dict, new: dict) -> dict:
    """``study.json`` after a study: ``old``'s arms that this study did not read are kept; an arm
    read before with the same record and baseline gains this study's seeds (a seed read again
    takes the new reading) and its verdict is taken again over all its seeds."""
    arms = dict(old.get("arms", {}))
    for name, entry in new["arms"].items():
        prev = arms.get(name, {})
        same = all(prev.get(k) == entry.get(k) for k in ("settings", "steps", "count_steps",
                                                          "channels_last", "synthetic",
                                                          "baseline"))
        if same and "pooled_per_seed" in prev:
            record = {k: entry[k] for k in ("settings", "steps", "count_steps", "channels_last",
                                            "synthetic")}
            entry = arm_entry(record, entry["baseline"],
                              {**prev["per_seed"], **entry["per_seed"]},
                              {**prev["pooled_per_seed"], **entry["pooled_per_seed"]})
        arms[name] = entry
    return {"argv": new["argv"], "argv_history": [*old.get("argv_history", []), new["argv"]],
            "arms": arms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arm", nargs="+", action="append", required=True,
                    metavar="NAME [STAGE:]KEY=VALUE",
                    help="an arm: its name, then its settings; the first arm is the baseline")
    ap.add_argument("--steps", type=int, nargs=2, default=[740, 661],
                    metavar=("CATEGORY", "INSTANCE"))
    ap.add_argument("--count-steps", type=int, default=150, help="stage 'counts' (0: none)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--synthetic", type=int, default=300)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/seed-study"))
    ap.add_argument("--cache", type=Path, default=None, help="score cache (tune_grouping's)")
    args = ap.parse_args(argv)
    try:
        arms = dict(parse_arm(words) for words in args.arm)
        if len(arms) < 2:
            raise PFNError("--arm: give a baseline and at least one more arm")
        shared = find_shared_data()
        if shared is None:
            raise PFNError("../shared/data not found (set PFN_SHARED_DATA): the study trains "
                           "and reads on the real photos")
        return run_study(args, arms, shared)
    except PFNError as exc:
        print(f"seed_study.py: {exc}", file=sys.stderr)
        return 2


def run_study(args, arms: dict[str, dict[str, list[str]]], shared: Path) -> int:
    """Train every arm's chain for every seed, read each arm against the baseline, print the
    tables and write OUT/study.json."""
    import pickle

    import tune_grouping as tg

    torch.set_num_threads(args.threads)
    spec = demo_train_spec(shared, args.synthetic)
    finals: dict[str, dict[int, Path]] = {name: {} for name in arms}
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        shared_category = None  # the stage 1 of the first arm without stage-1 settings
        shared_instance = None  # the stage 2 of the first arm with settings for 'counts' only
        for name, settings in arms.items():
            own = bool(settings["category"])
            own_instance = own or bool(settings["instance"])
            claim_arm_folder(root / name, name, arm_record(settings, args))
            if not own_instance and shared_instance is not None:
                share_stage(root / name / "instance", shared_instance)
            print(f"seed {seed}, {name}: training (or reusing) {root / name}", flush=True)
            finals[name][seed] = chain(root / name, spec, seed, settings, args,
                                       None if own else shared_category)
            if not own and shared_category is None:
                shared_category = root / name / "category" / "final.pt"
            if not own_instance and shared_instance is None:
                shared_instance = root / name / "instance"
    cache = tg.read_cache(args.cache)
    save = None if args.cache is None else \
        (lambda: atomic_write(args.cache, lambda fh: pickle.dump(cache, fh)))
    baseline = next(iter(arms))
    report: dict = {"argv": sys.argv[1:], "arms": {}}
    for name in list(arms)[1:]:
        per_seed, pooled_metrics = {}, {name: [], baseline: []}
        pooled_per_seed = {}
        for seed in args.seeds:
            new, old, pooled, metrics = read_pair(finals[name][seed], finals[baseline][seed],
                                                  shared, cache, save, args.folds)
            per_seed[seed] = (new, old)
            pooled_per_seed[str(seed)] = metrics
            pooled_metrics[name].append(metrics[0])
            pooled_metrics[baseline].append(metrics[1])
            print(f"\n{name} against {baseline}, seed {seed}: held objective per fold "
                  + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(new, old)) + "\n")
            print("\n".join(pooled))
        arm_mean, base_mean, wins = seed_verdict(per_seed)
        print(f"\n{name} against {baseline}, mean over seeds {args.seeds}, per fold: "
              + ", ".join(f"{a:.1f} / {b:.1f} ({a - b:+.1f})"
                          for a, b in zip(arm_mean, base_mean))
              + f"; higher on every fold: {'yes' if wins else 'no'}\n")
        means = {arm: seed_means(rows) for arm, rows in pooled_metrics.items()}
        print("| pooled, mean of the seeds | " + " | ".join(c[1] for c in MEAN_COLUMNS) + " |")
        print("|---|" + "---:|" * len(MEAN_COLUMNS))
        for arm, row in means.items():
            print(f"| {arm} | " + " | ".join(f"{row[k]:.{d}f}" for k, _, d in MEAN_COLUMNS)
                  + " |")
        report["arms"][name] = arm_entry(arm_record(arms[name], args), baseline,
                                         {str(s): v for s, v in per_seed.items()},
                                         pooled_per_seed)
    path = args.out / "study.json"
    merged = write_study(path, report)
    print(f"\nwrote {path}")
    for name, entry in merged["arms"].items():
        if name in report["arms"] and entry["seeds"] != report["arms"][name]["seeds"]:
            print(f"{name} against {entry['baseline']} over the seeds read so far "
                  f"{entry['seeds']}: per fold " + ", ".join(
                      f"{a - b:+.1f}" for a, b in zip(entry["mean"], entry["baseline_mean"]))
                  + f"; higher on every fold: {'yes' if entry['wins'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
