"""Record, or check, what the shipped model predicts on the real val splits: a refactor that
is not meant to change behaviour must leave this record unchanged.

    python scripts/prediction_fingerprint.py --write tests/fingerprints/shipped-val.json
    python scripts/prediction_fingerprint.py --check tests/fingerprints/shipped-val.json

Each image is recorded as its instances (class, mask area, mask bounding box, a short hash of
the mask, score to 3 decimals) in the order the model returns them. ``--check`` prints every
image that differs and exits 1 when one does. The test ``tests/test_fingerprint.py`` runs the
check on the COCO val photos when ``../shared/data`` is there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfn_napari.demo import find_shared_data, open_set, real_specs  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402


def instance_record(mask: np.ndarray, cls: int, score: float) -> list:
    """``[class, area, [y0, x0, y1, x1], hash, score]`` of one ``(H, W)`` bool mask."""
    ys, xs = np.nonzero(mask)
    box = [int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())] if len(ys) else []
    digest = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()[:12]
    return [int(cls), int(mask.sum()), box, digest, round(float(score), 3)]


def fingerprint(weights: str, sets: list[str] | None, limit: int | None) -> dict[str, list]:
    """``{"set/image_id": [instance records]}`` for the val splits of the real data."""
    predictor = Predictor(weights, device="cpu")
    out: dict[str, list] = {}
    for es in real_specs(find_shared_data()):
        if sets and es.name not in sets:
            continue
        ds = open_set(es, es.split, predictor.class_names, limit)
        if ds is None:
            continue
        for i in range(len(ds)):
            sample = ds[i]
            inst = predictor.predict(sample.image)
            out[f"{es.name}/{sample.image_id}"] = [
                instance_record(m, c, s) for m, c, s in zip(inst.masks, inst.classes, inst.scores)]
    return out


def compare(old: dict[str, list], new: dict[str, list]) -> list[str]:
    """One line per image whose instances differ (scores within 0.002 count as equal)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            lines.append(f"{key}: only in the {'new' if a is None else 'recorded'} run")
            continue
        same = len(a) == len(b) and all(
            x[:4] == y[:4] and abs(x[4] - y[4]) <= 0.002 for x, y in zip(a, b))
        if not same:
            lines.append(f"{key}: recorded {[(x[0], x[1]) for x in a]} now {[(y[0], y[1]) for y in b]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--sets", nargs="*", help="coco-voc pennfudan horses (default: all present)")
    p.add_argument("--limit", type=int, help="the first N images of each set")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path)
    group.add_argument("--check", type=Path)
    args = p.parse_args(argv)
    if find_shared_data() is None:
        print("no ../shared/data beside the project: nothing to fingerprint", file=sys.stderr)
        return 2
    new = fingerprint(args.weights, args.sets, args.limit)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.write.with_suffix(".tmp")
        lines = [f"{json.dumps(k)}: {json.dumps(new[k])}" for k in sorted(new)]
        tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one image a line
        tmp.replace(args.write)
        print(f"wrote {len(new)} images to {args.write}")
        return 0
    old = json.loads(args.check.read_text())
    if args.sets or args.limit:
        old = {k: v for k, v in old.items() if k in new}
    diff = compare(old, new)
    print("\n".join(diff) if diff else f"{len(new)} images: the same predictions as recorded")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
