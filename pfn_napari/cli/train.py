"""``pfn train --stage category|instance|unified|counts --config FILE [options]``: train one stage.

Examples::

    pfn train --stage category --config cpu-lite0 --out runs/lite0-cat
    pfn train --stage instance --config cpu-lite0 --init runs/lite0-cat/final.pt --out runs/lite0-inst
    pfn train --stage counts --config cpu-demo --init runs/demo-inst/final.pt --out runs/demo-counts
    pfn train --resume runs/lite0-inst/last.pt            # continue exactly (stored config)
    pfn train --stage category --config paper-vgg16 --backbone-weights vgg16-397923af.pth \\
        --set data.train=sbd:/data/SBD --set data.val=voc:/data/VOC2012
    torchrun --standalone --nproc_per_node 2 -m pfn_napari train --stage category --config cpu-lite0

``--config`` takes a YAML file or a shipped name (paper-vgg16, paper-alexnet, cpu-lite0);
``--set section.key=value`` overrides any field (repeatable). With ``--resume`` and no
``--config`` the checkpoint's stored config is used (``--set`` may still change e.g.
``train.max_steps``). Outputs: OUT/config.yaml, log.csv, val.csv, tb/, last.pt, final.pt. An
OUT that already holds a run is refused unless ``--resume`` (continue it) or ``--overwrite``;
so is an OUT another ``pfn train`` is writing to (a lock, OUT/.pfn-train.lock, names its pid).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..config import TRAIN_STAGES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PFN stage (category, instance, unified or counts)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=TRAIN_STAGES, default=None,
                   help="which network to train (default: the config's train.stage); 'counts': "
                        "the count head of an instance checkpoint (--init) alone, on whole photos")
    p.add_argument("--config", default=None,
                   help="YAML file or shipped config name (paper-vgg16, paper-alexnet, cpu-lite0)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue from a training checkpoint (OUT/last.pt)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (train.out_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoints and logs); without "
                        "it, a folder holding a run is refused unless --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--backbone-weights", default=None, metavar="PATH",
                   help="ImageNet weights of the backbone (torchvision VGG-16 / AlexNet file)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="checkpoint the stage starts from: stage 'instance' from a category "
                        "checkpoint, stage 'counts' from an instance checkpoint")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--train-exclude", default=None, metavar="val|VOC_ROOT|IDS.txt",
                   help="drop these image ids from SBD training data (data.train_exclude): "
                        "'val' = the images of data.val, a VOC root = its "
                        "ImageSets/Segmentation/val.txt, or a file of ids; '' keeps all")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The run's :class:`PFNConfig`: config file (or the resumed checkpoint's stored config),
    then ``--set`` overrides, then the dedicated flags."""
    from ..checkpoint import read_checkpoint
    from ..config import apply_overrides, config_from_dict, config_to_dict, load_config

    # the stage goes in with the overrides too: it picks the config file's stage section
    overrides = list(args.overrides) + ([f"train.stage={args.stage}"] if args.stage else [])
    flags = {"train.stage": args.stage, "train.out_dir": args.out,
             "train.backbone_weights": args.backbone_weights, "train.init": args.init,
             "train.device": args.device, "data.train_exclude": args.train_exclude}
    # flags are applied as strings, not YAML-parsed (paths like 'on' or '1e3' stay paths)
    if args.config is None and args.resume:
        stored = read_checkpoint(args.resume)["config"]
        values = apply_overrides(stored, overrides)
        cfg = config_from_dict(values, where=f"{args.resume} (stored config)")
    else:
        cfg = load_config(args.config, overrides)
    values = config_to_dict(cfg)
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            values[section][name] = str(value)
    cfg = config_from_dict(values)
    if not args.resume:
        from ..train import note_line
        from ..train_data import data_defaults

        cfg = data_defaults(cfg, given_keys(args), note_line)
    cfg.validate()
    return cfg


def given_keys(args: argparse.Namespace) -> set[str]:
    """The ``section.key`` settings the user chose: ``--set`` ones, and those of a
    ``--config`` YAML of their own (a shipped recipe's are not the user's choice)."""
    from ..config import CONFIG_DIR, migrate_key

    keys = {migrate_key(o.split("=", 1)[0].strip()) for o in args.overrides if "=" in o}
    path = Path(args.config) if args.config else None
    if path is not None and path.is_file() and path.resolve().parent != CONFIG_DIR.resolve():
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        keys |= {f"{section}.{key}" for section, fields in values.items()
                 if isinstance(fields, dict) for key in fields}
    return keys


def run(args: argparse.Namespace) -> int:
    from ..train import train

    cfg = build_config(args)
    final = train(cfg, resume=args.resume, progress=not args.no_progress,
                  overwrite=args.overwrite)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0
