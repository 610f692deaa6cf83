"""``pfn demo``: the shipped model on the shipped images and the embedded data, as a report.

What it does, in order (a progress bar for each step):

1. with ``train=True``, retrain the CPU recipe (``cpu-demo`` config) through both stages on the
   embedded synthetic data, plus the real data in ``../shared/data`` when present; otherwise load
   the shipped weights (``weights/pfn-lite0-voc.pt``);
2. segment the shipped sample images (overlay and Fig.-1 arrow pictures);
3. evaluate on the validation split of every embedded data set whose classes the model knows
   (synthetic shapes always; the COCO-derived VOC images and Penn-Fudan when present);
4. write ``OUT/metrics.json`` (all data sets together, the format of ``pfn evaluate``), one
   folder per data set, precision/recall and loss curves, and ``OUT/report.md`` / ``index.html``.

Every number in the report comes from this run.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import VOC_CLASSES, load_config
from .errors import PFNError

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SHAPE_CLASSES = ("disc", "square", "triangle")
#: Classes of the shipped model: the 20 VOC classes and the embedded shapes.
DEMO_CLASSES = VOC_CLASSES + SHAPE_CLASSES


def find_shared_data() -> Path | None:
    """``$PFN_SHARED_DATA`` or ``shared/data`` beside the repository / working folder."""
    env = os.environ.get("PFN_SHARED_DATA")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[2] / "shared" / "data",
                                          Path.cwd().parent / "shared" / "data",
                                          Path.cwd() / "shared" / "data"]
    for c in candidates:
        if (c / "coco128-train").is_dir() or (c / "pennfudan").is_dir():
            return c
    return None


@dataclass(frozen=True)
class EvalSet:
    name: str
    spec: str
    split: str
    classes: tuple[str, ...] | None  # the data's own class names when it needs them given


def real_specs(shared: Path | None) -> list[EvalSet]:
    """The real data sets under ``shared`` (COCO-derived VOC layout, Penn-Fudan, Weizmann
    horses)."""
    if shared is None:
        return []
    out = []
    voc = shared / "coco128-train" / "voc" / "VOC2012"
    if voc.is_dir():
        out.append(EvalSet("coco-voc", f"voc:{voc}", "val", None))
    pf = shared / "pennfudan"
    if (pf / "PNGImages").is_dir():
        out.append(EvalSet("pennfudan", f"folder:{pf / 'PNGImages'}:{pf / 'PedMasks'}", "val",
                           ("person",)))
    horses = shared / "weizmann-horse"
    if (horses / "images").is_dir():
        out.append(EvalSet("horses", f"folder:{horses / 'images'}:{horses / 'masks'}", "val",
                           ("horse",)))
    return out


def no_voc_photos(shared: Path, classes: tuple[str, ...]):
    """The photos of ``coco128-train/coco/instances.json`` that the VOC layout's ``trainval``
    leaves out (they hold no VOC object, so no network was trained on them: every object shown
    there is false) as a dataset on ``classes``; None without them."""
    from .data import SubsetDataset, open_dataset

    root = shared / "coco128-train"
    annotations = root / "coco" / "instances.json"
    trainval = root / "voc" / "VOC2012" / "ImageSets" / "Segmentation" / "trainval.txt"
    if not annotations.is_file() or not trainval.is_file():
        return None
    ds = open_dataset(f"coco:{annotations}:{root / 'coco' / 'images'}", "val", classes)
    used = set(trainval.read_text().split())
    return SubsetDataset(ds, [i for i in range(len(ds)) if Path(ds.source_of(i)).stem not in used])


def open_set(es: EvalSet, split: str, classes: tuple[str, ...], limit: int | None = None):
    """Open an eval set mapped onto the model's ``classes`` (``limit`` first images); None
    when the model knows none of its classes."""
    from .data import ConcatDataset, SubsetDataset, normalise_class_name, open_dataset

    ds = open_dataset(es.spec, split, es.classes)
    known = {normalise_class_name(c) for c in classes}
    if not any(normalise_class_name(c) in known for c in ds.classes):
        return None  # the model knows none of the data's classes
    ds = ConcatDataset([ds], classes)  # map the data's class names onto the model's
    if limit is not None and len(ds) > limit:
        ds = SubsetDataset(ds, list(range(limit)))
    return ds


#: How many times each real set appears in the training data: the COCO photos are the few
#: varied, crowded scenes (and the kind of photo the model is checked on), so they are repeated.
TRAIN_REPEATS = {"coco-voc": 3, "pennfudan": 1, "horses": 1}


def demo_train_spec(shared: Path | None, synthetic: int = 300,
                    repeats: dict[str, int] | None = None) -> str:
    """The ``cpu-demo`` training data: synthetic shapes (none when ``synthetic`` is 0), plus
    the real data when present, each set repeated :data:`TRAIN_REPEATS` times (``repeats``
    overrides some of them, e.g. ``{"coco-voc": 8}``)."""
    times = {**TRAIN_REPEATS, **(repeats or {})}
    parts = [f"synthetic:{synthetic}"] if synthetic > 0 else []
    for es in real_specs(shared):
        spec = es.spec if es.classes is None else f"{es.spec}:{','.join(es.classes)}"
        parts += [spec] * times.get(es.name, 1)
    if not parts:
        raise PFNError("no training data: no synthetic images asked for and no real data found")
    return "+".join(parts)


def train_stages(out: Path, train_spec: str, overrides: list[str] | None = None,
                 category_steps: int | None = None, instance_steps: int | None = None,
                 device: str = "auto", config: str = "cpu-demo",
                 init: Path | None = None, progress: bool = True,
                 category_minutes: float | None = None, instance_minutes: float | None = None,
                 stage_overrides: dict[str, list[str]] | None = None,
                 counts_steps: int | None = None, counts_minutes: float | None = None,
                 reuse: bool = False) -> tuple[Path, dict[str, Path]]:
    """Stage 1 (category), stage 2 (instance), then, when ``counts_steps`` or
    ``counts_minutes`` is given, stage 'counts' of ``config`` on ``train_spec`` (with the
    config's ``stages: counts`` settings), each in ``out/STAGE``.

    ``*_steps`` / ``*_minutes`` bound each stage (steps, wall clock; the first reached stops
    it); ``stage_overrides`` adds settings to one stage only. ``init`` skips stage 1 and starts
    stage 2 from that category checkpoint. ``reuse``: a stage whose ``out/STAGE/final.pt``
    exists is not trained again (a study stopped half-way goes on). Returns the final
    checkpoint of the last stage and the CSV logs of the stages that ran.
    """
    from .train import train

    logs: dict[str, Path] = {}
    ckpt = init
    stages = [("category", category_steps, category_minutes),
              ("instance", instance_steps, instance_minutes)]
    if counts_steps or counts_minutes:
        stages.append(("counts", counts_steps, counts_minutes))
    for stage, steps, minutes in stages:
        if stage == "category" and init is not None:
            continue
        settings = [f"train.stage={stage}", f"data.train={train_spec}",
                    f"train.out_dir={out / stage}", f"train.device={device}",
                    *(overrides or []), *((stage_overrides or {}).get(stage, []))]
        if steps:
            settings.append(f"train.max_steps={steps}")
        if minutes:
            settings.append(f"train.max_minutes={minutes}")
        if stage != "category":
            settings.append(f"train.init={ckpt}")
        if reuse and (out / stage / "final.pt").is_file():
            ckpt = out / stage / "final.pt"
            continue
        ckpt = train(load_config(config, settings), progress=progress)
        logs[stage] = out / stage / "log.csv"
    assert ckpt is not None
    return ckpt, logs


def train_demo_model(out: Path, quick: bool, shared: Path | None, device: str,
                     progress: bool = True) -> tuple[Path, dict[str, Path]]:
    """Both stages of the CPU recipe on the embedded data (+ real data when present)."""
    spec = demo_train_spec(shared, 40 if quick else 300)
    steps = 30 if quick else None
    # wall-clock bounds keep `pfn demo --train` within ~10 minutes on a 2-core CPU
    minutes = (0.5, 0.5) if quick else (2.5, 3.5)
    return train_stages(out / "train", spec, category_steps=steps, instance_steps=steps,
                        category_minutes=minutes[0], instance_minutes=minutes[1],
                        device=device, progress=progress)


def write_history_csv(history: dict[str, list[dict[str, Any]]], folder: Path) -> dict[str, Path]:
    """The training logs stored in a weights file (``meta["history"]``) back as CSV files."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for stage, rows in history.items():
        if not rows:
            continue
        path = folder / f"{stage}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        out[stage] = path
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def run_demo(out: str | Path = "pfn-demo-report", quick: bool = False, train: bool = False,
             weights: str | Path | None = None, device: str = "auto", grouping: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo and write the report folder; returns the combined metrics dict."""
    from tqdm import tqdm

    from .data import read_image
    from .evaluate import Evaluator, write_metrics
    from .predictor import Predictor
    from .producers import evaluate_dataset, model_producer
    from .visualize import plot_loss_curves, plot_pr_curves

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = find_shared_data()
    logs: dict[str, Path] = {}
    if train:
        weights, logs = train_demo_model(out, quick, shared, device, progress)
    predictor = Predictor(weights, device)
    model = predictor.model
    if grouping is not None:
        predictor.grouping = replace(predictor.grouping, method=grouping)
    gcfg = predictor.grouping
    classes = model.class_names
    pictures: list[tuple[str, str]] = []

    # 2. the shipped sample images
    sample_files = sorted(SAMPLE_DIR.glob("*.jpg"))[: 1 if quick else None]
    for path in tqdm(sample_files, desc="sample images", unit="img", disable=not progress):
        inst = predictor.predict(read_image(path, exif=True), name=str(path), image_id=path.stem)
        found = f"{len(inst)} instance{'' if len(inst) == 1 else 's'}"
        pictures += save_pictures(predictor, inst, out / "samples", path.stem,
                                  f"{path.name}: {found}")

    # 3. evaluation on every data set the model knows the classes of
    synth = EvalSet("synthetic", "synthetic:6" if quick else "synthetic:40", "val", None)
    sets = [synth] + real_specs(shared)
    combined = Evaluator(classes)
    per_set: dict[str, Any] = {}
    for es in sets:
        try:
            ds = open_set(es, es.split, classes, limit=6 if quick else None)
        except PFNError as exc:
            print(f"pfn demo: skipping {es.name}: {exc}")
            continue
        if ds is None or len(ds) == 0:
            continue

        def picture(i: int, sample, inst, es=es) -> None:
            if i < (1 if quick else 3):
                name = f"{es.name}/{sample.image_id}"
                pictures.extend(save_pictures(predictor, inst, out / es.name,
                                              str(sample.image_id),
                                              f"{name}: {len(inst)} predicted, "
                                              f"{sample.num_instances} true"))

        m = evaluate_dataset(ds, model_producer(predictor, ds), desc=f"evaluate {es.name}",
                             progress=progress, also=[combined], on_image=picture)
        write_metrics(m, out / es.name, classes)
        errors = m.count_error()[m.has_gt]
        per_set[es.name] = {"images": m.num_images, **{k: v for k, v in m.to_dict(False).items()
                                                       if k in ("ap_r", "ap_r_vol", "miou")},
                            "count_error": float(errors.mean()) if errors.size else None}
    if combined.num_images == 0:
        raise PFNError("the demo found no data set whose classes the model knows")
    metrics = combined.result()
    write_metrics(metrics, out, classes)
    plot_pr_curves(metrics.pr_curves(0.5), out / "pr_curves.png",
                   title="precision / recall at IoU 0.5 (all demo data)")
    if not logs and model.meta.get("history"):
        logs = write_history_csv(model.meta["history"], out / "train_logs")
    if logs:
        plot_loss_curves(logs, out / "loss_curves.png")

    data = json.loads((out / "metrics.json").read_text())
    data["datasets"] = per_set
    data["model"] = {"weights": str(model.path), "backbone": model.config.model.backbone,
                     "grouping": gcfg.method, "device": str(model.device)}
    t = predictor.times
    data["timing"] = {"images": t.images, "network_s_per_image": t.network_per_image,
                      "grouping_s_per_image": t.grouping_per_image,
                      "total_s": time.perf_counter() - t0}
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out / "metrics.json")
    write_report(out, data, per_set, pictures, bool(logs))
    return data


def save_pictures(predictor, inst, folder: Path, stem: str, caption: str) -> list[tuple[str, str]]:
    """The overlay and the Fig.-1 arrows of the predictor's current image, in ``folder``;
    returns ``(path relative to the report, caption)`` of each."""
    from .visualize import save_overlay

    save_overlay(folder / f"{stem}_overlay.png", predictor.image, inst, predictor.class_names,
                 title=caption)
    predictor.save_arrows(folder / f"{stem}_arrows.png", inst)
    return [(f"{folder.name}/{stem}_overlay.png", caption),
            (f"{folder.name}/{stem}_arrows.png", f"{caption.split(':')[0]}: location arrows")]


def write_report(out: Path, data: dict[str, Any], per_set: dict[str, Any],
                 pictures: list[tuple[str, str]], has_loss: bool) -> None:
    """``report.md`` and ``index.html``: the tables, then the pictures."""
    thresholds = list(data["ap_r"])
    head = ("| data | images | " + " | ".join(f"AP^r@{t}" for t in thresholds)
            + " | AP^r_vol | mIoU | count error |")
    rule = "|---|---:|" + "---:|" * (len(thresholds) + 3)
    rows = [f"| {name} | {d['images']} | " + " | ".join(_fmt(d["ap_r"].get(t)) for t in thresholds)
            + f" | {_fmt(d['ap_r_vol'])} | {_fmt(d['miou'])} | "
            + ("-" if d.get("count_error") is None else f"{d['count_error']:.2f}") + " |"
            for name, d in per_set.items()]
    rows.append(f"| **all** | {data['num_images']} | " + " | ".join(
        _fmt(data["ap_r"].get(t)) for t in thresholds)
        + f" | {_fmt(data['ap_r_vol'])} | {_fmt(data['miou'])} | |")
    tm = data["timing"]
    md = ["# PFN demo report", "",
          f"Model: `{data['model']['weights']}` ({data['model']['backbone']}, grouping "
          f"`{data['model']['grouping']}`, {data['model']['device']}).", "",
          "## Instance segmentation (AP^r, percent; SDS/VOC protocol)", "", head, rule, *rows, "",
          "Count error: the mean absolute error of the number of instances per image, averaged "
          "over the classes with ground truth. "
          f"Per-class tables (AP^r, IoU, count error): `metrics.md` (all data) and "
          f"`<data>/metrics.md`. Time per image: "
          f"network {tm['network_s_per_image']:.3f} s, grouping {tm['grouping_s_per_image']:.3f} s "
          f"({tm['images']} images, {tm['total_s']:.0f} s in all).", "",
          "## Curves", "", "![precision/recall](pr_curves.png)", ""]
    if has_loss:
        md += ["![loss](loss_curves.png)", ""]
    md += ["## Pictures", ""] + [f"**{cap}**\n\n![{cap}]({src})\n" for src, cap in pictures]
    tmp = out / ".report.md.tmp"
    tmp.write_text("\n".join(md))
    os.replace(tmp, out / "report.md")
    body = [f"<h1>PFN demo report</h1><p>Model: <code>{html.escape(data['model']['weights'])}"
            f"</code></p><h2>AP<sup>r</sup> (percent)</h2><table border=1 cellpadding=4>",
            "<tr><th>data</th><th>images</th>" + "".join(f"<th>AP^r@{t}</th>" for t in thresholds)
            + "<th>AP^r_vol</th><th>mIoU</th></tr>"]
    for name, d in [*per_set.items(), ("all", {**data, "images": data["num_images"]})]:
        body.append(f"<tr><td>{html.escape(name)}</td><td>{d['images']}</td>" + "".join(
            f"<td>{_fmt(d['ap_r'].get(t))}</td>" for t in thresholds)
            + f"<td>{_fmt(d['ap_r_vol'])}</td><td>{_fmt(d['miou'])}</td></tr>")
    body.append("</table><h2>Curves</h2><img src='pr_curves.png'>")
    if has_loss:
        body.append("<img src='loss_curves.png'>")
    body.append("<h2>Pictures</h2>")
    body += [f"<figure><img src='{src}' style='max-width:640px'><figcaption>{html.escape(cap)}"
             f"</figcaption></figure>" for src, cap in pictures]
    tmp = out / ".index.html.tmp"
    tmp.write_text("<!doctype html><meta charset=utf-8><title>PFN demo</title>\n" + "\n".join(body))
    os.replace(tmp, out / "index.html")
