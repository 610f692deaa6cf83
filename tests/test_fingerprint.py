"""The shipped model's predictions on the real COCO val photos are the recorded ones
(tests/fingerprints/shipped-val.json, written by scripts/prediction_fingerprint.py before a
refactor that must not change behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_helpers import import_script

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "fingerprints" / "shipped-val.json"


def load_script():
    return import_script("scripts/prediction_fingerprint.py")


def test_compare_names_every_image_that_differs():
    fp = load_script()
    old = {"a/1": [[1, 10, [0, 0, 3, 3], "h", 0.5]], "a/2": []}
    assert fp.compare(old, {"a/1": [[1, 10, [0, 0, 3, 3], "h", 0.501]], "a/2": []}) == []
    diff = fp.compare(old, {"a/1": [[1, 11, [0, 0, 3, 3], "g", 0.5]], "a/3": []})
    assert [d.split(":")[0] for d in diff] == ["a/1", "a/2", "a/3"]


@pytest.mark.slow
def test_shipped_predictions_on_coco_val_are_the_recorded_ones(shared_data):
    fp = load_script()
    old = json.loads(RECORD.read_text())
    new = fp.fingerprint("default", ["coco-voc"], None)
    assert len(new) == 17
    assert fp.compare({k: v for k, v in old.items() if k in new}, new) == []
