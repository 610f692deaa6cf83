"""Screenshots of the PFN napari plugin for the docs (``docs/images/napari_*.png``).

Opens a real napari window with the PFN dock widget, loads a sample image, runs PFN and saves
the window at each teaching stage and after a count override. Needs a display; on a server:

    xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshots.py
    xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshots.py --weights runs/x/final.pt

Weights default to the shipped ones (``weights/pfn-lite0-voc.pt``); screenshots of an untrained
model would show noise, so without weights the script stops with a message, unless ``--oracle
VOC_ROOT`` asks for the *oracle* view: the layers of the image's ground truth
(:func:`pfn_napari.grouping.oracle_network_output`: exact classes, locations and counts) run
through the real grouping and the widget, the paper's "ground-truth" upper bound. The sample
images are COCO 77 (skaters), 49 (horses) and 510 (bench) of ``coco128-train/voc/VOC2012``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


ORACLE_IDS = {"skaters": "000000000077", "horses": "000000000049", "bench": "000000000510"}
#: The shots, in the order they are taken (``--shots`` picks some).
SHOTS = ("overview", "teach_stages", "count_override", "teach")
#: What the 'teach' shot paints on the skaters: napari (row, col) polygons of the man standing
#: behind the middle skater (the shipped model misses him) and of the left skater's board.
MISSED_MAN = [(56, 273), (55, 283), (62, 287), (68, 293), (100, 290), (108, 289), (137, 291),
              (138, 280), (110, 275), (100, 271), (70, 267), (63, 271)]
LEFT_BOARD = [(338, 58), (335, 100), (343, 103), (349, 61)]


def _teach_loop(viewer, widget, shot, settle, folder: Path, minutes: float) -> None:
    """The loop of docs/finetune.md 'In napari' as a user drives it: a missed person and a
    board painted with the layer's *new* label, the board typed in as 'skateboard', the image
    added, a fine-tune started; the window is shot while it runs."""
    from napari.layers.labels._labels_key_bindings import new_label

    from pfn_napari.napari import layers as L

    for name in L.LAYER_NAMES:
        widget.layer(name).visible = name == L.INSTANCES
    layer = widget.layer(L.INSTANCES)
    viewer.layers.selection.active = layer
    for polygon in (MISSED_MAN, LEFT_BOARD):
        new_label(layer)  # the layer's 'new' button: the largest id + 1
        layer.paint_polygon(polygon, layer.selected_label)
        settle(0.5)  # the Teach group catches up when the painting pauses
    widget.set_instance_class(layer.selected_label, "skateboard")
    widget.training_folder = folder
    if widget.add_to_training_set() is None:
        raise SystemExit(f"screenshots: error: {widget.last_error}")
    box = widget.teach_box
    box.minutes_spin.setValue(minutes)
    box.finetune_button.click()
    while box.busy and box.progress.value() < 0.6 * box.progress.maximum():
        settle(0.2)
    bar = widget.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())  # the dock scrolled down to the group
    shot("teach")
    while box.busy or widget.busy:
        settle(0.5)
    print(f"teach: {widget.last_message}")


def _show_oracle(widget, voc_root: str, sample_key: str) -> None:
    """Replace the widget's network output by the sample's ground truth and redraw."""
    from pfn_napari.data import open_dataset
    from pfn_napari.grouping import oracle_network_output

    s = widget.session
    ds = open_dataset(f"voc:{voc_root}", "trainval", s.class_names)
    image_id = ORACLE_IDS[sample_key]
    sample = next(ds[i] for i in range(len(ds)) if str(ds[i].image_id) == image_id)
    if sample.image.shape != s.image.shape:
        raise SystemExit(f"screenshots: error: {image_id} is {sample.image.shape}, the sample "
                         f"image {s.image.shape}")
    net = oracle_network_output(sample, len(s.class_names), s.model.encoding, full_classes=True)
    widget.show_network_output(net)
    widget.weights_edit.setText(f"(oracle: ground truth of COCO {int(image_id)})")
    widget.message_label.setText(f"Oracle view: the ground truth of COCO {int(image_id)} in place "
                                 "of the networks' output (classes, locations, counts).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    ap.add_argument("--sample", default="skaters", help="skaters, horses or bench")
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    ap.add_argument("--method", default=None, help="grouping method (default: the model's)")
    ap.add_argument("--sigma", type=float, default=None, help="grouping sigma (default: the model's)")
    ap.add_argument("--size", default="1280x1000", help="window size WxH")
    ap.add_argument("--count", type=int, default=None,
                    help="the count override shown last: this many instances of the largest "
                         "class (default: one more than found), e.g. the true number")
    ap.add_argument("--shots", default=",".join(SHOTS),
                    help=f"which shots, comma-separated (default: all of {', '.join(SHOTS)})")
    ap.add_argument("--teach-folder", default=None,
                    help="the training set of the 'teach' shot (default: a new temporary folder)")
    ap.add_argument("--oracle", default=None, metavar="VOC_ROOT",
                    help="show the sample's ground truth as the network output (no weights needed)")
    args = ap.parse_args(argv)
    shots = [name.strip() for name in args.shots.split(",") if name.strip()]
    unknown = sorted(set(shots) - set(SHOTS))
    if unknown:
        print(f"screenshots: error: --shots {args.shots}: unknown {', '.join(unknown)} "
              f"(expected some of {', '.join(SHOTS)})", file=sys.stderr)
        return 2
    if "teach" in shots and args.sample != "skaters":
        print(f"screenshots: error: the 'teach' shot paints objects of the skaters sample, not "
              f"of {args.sample!r}: pass --sample skaters or leave 'teach' out of --shots",
              file=sys.stderr)
        return 2

    import torch  # before napari's OpenGL context (see pfn_napari.napari)

    torch.set_num_threads(2)
    import napari

    from pfn_napari.inference import default_weights_path
    from pfn_napari.napari import PFNWidget
    from pfn_napari.napari import layers as L

    weights = args.weights or str(default_weights_path())
    if args.oracle:
        import tempfile

        from pfn_napari.checkpoint import save_weights
        from pfn_napari.config import ModelConfig, PFNConfig
        from pfn_napari.model import build_system

        cfg = PFNConfig(model=ModelConfig(backbone="efficientnet_lite0"))  # 20 VOC classes
        weights = str(save_weights(Path(tempfile.mkdtemp()) / "stand-in.pt",
                                   build_system(cfg.model, "unified"), cfg))
    if not Path(weights).is_file():
        print(f"screenshots: error: {weights}: no weights file (train them, or pass --weights)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))

    viewer = napari.Viewer(title="pfn-napari", show=True)
    viewer.window.resize(width, height)
    widget = PFNWidget(viewer)
    viewer.window.add_dock_widget(widget, name="PFN instance segmentation", area="right")
    widget.setMaximumWidth(400)  # leave the canvas as much of the window as the widget allows
    viewer.open_sample("pfn-napari", args.sample)
    widget.weights_edit.setText(weights)
    widget.device_combo.setCurrentText("auto")
    widget.run_sync()
    if widget.last_error:
        print(f"screenshots: error: {widget.last_error}", file=sys.stderr)
        return 2
    if args.oracle:
        _show_oracle(widget, args.oracle, args.sample)
    if args.method or args.sigma:
        widget.synchronous = True
        if args.method:
            widget.method_combo.setCurrentText(args.method)
        if args.sigma:
            widget.sigma_spin.setValue(args.sigma)
        widget.synchronous = False
    app = napari.qt.get_qapp()

    def settle(seconds: float = 1.0) -> None:
        """Let Qt lay the window out and vispy resize its canvas (else the grab is stretched)."""
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    settle(2.0)
    viewer.reset_view()

    def shot(name: str) -> None:
        """The window with the canvas pasted in: under Xvfb, grabbing the window draws the
        OpenGL canvas stretched, while the canvas's own screenshot is right."""
        import numpy as np
        from napari._qt.dialogs.qt_notification import NapariQtNotification
        from PIL import Image
        from qtpy.QtCore import QPoint

        qt_window = viewer.window._qt_window
        for toast in qt_window.findChildren(NapariQtNotification):
            toast.close()
        settle(0.5)
        window = viewer.screenshot(canvas_only=False, flash=False)  # (H, W, 4)
        canvas = viewer.screenshot(canvas_only=True, flash=False)  # (h, w, 4)
        native = viewer.window._qt_viewer.canvas.native
        pos = native.mapTo(qt_window, QPoint(0, 0))
        y, x = pos.y(), pos.x()
        h = min(canvas.shape[0], window.shape[0] - y)
        w = min(canvas.shape[1], window.shape[1] - x)
        window = np.array(window)
        window[y:y + h, x:x + w] = canvas[:h, :w]
        path = out / f"napari_{name}.png"
        rgb = Image.fromarray(np.ascontiguousarray(window[..., :3]))
        rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"wrote {path}")

    # 1. the overview: instances and their velocity vectors over the photo
    if "overview" in shots:
        for name in L.LAYER_NAMES:  # the image's layers ("PFN instances: skaters" ...)
            widget.layer(name).visible = name in (L.INSTANCES, L.VECTORS)
        viewer.layers.selection.active = widget.layer(L.INSTANCES)
        shot("overview")

    # 2..7 teaching mode, one stage at a time
    if "teach_stages" in shots:
        widget.teach_check.setChecked(True)
        for k, name in enumerate(("category", "refined", "locations", "vectors", "clusters",
                                  "instances")):
            widget.show_stage(k)
            if name == "locations":
                widget.channel_combo.setCurrentIndex(0)  # cx
            shot(f"teach_{k + 1}_{name}")
        widget.teach_check.setChecked(False)

    # 8. an annotator's count override: --count instances of the largest class (default +1)
    s = widget.session
    c = s.clustering
    if len(c.instances) and "count_override" in shots:
        cls = int(max(set(c.instances.classes.tolist()),
                      key=lambda k: int((c.instances.classes == k).sum())))
        before = int((c.instances.classes == cls).sum())
        widget.synchronous = True
        widget.set_count(cls, before + 1 if args.count is None else args.count)
        widget.synchronous = False
        for name in L.LAYER_NAMES:
            widget.layer(name).visible = name == L.INSTANCES
        shot("count_override")
        print(f"count override: {s.class_names[cls - 1]} {before} -> "
              f"{int((s.clustering.instances.classes == cls).sum())} instances")

    # 9. the Teach group: fix, add, fine-tune (docs/finetune.md 'In napari')
    if "teach" in shots:
        import tempfile

        folder = Path(args.teach_folder or Path(tempfile.mkdtemp()) / "pfn-corrections")
        _teach_loop(viewer, widget, shot, settle, folder, minutes=0.2)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
