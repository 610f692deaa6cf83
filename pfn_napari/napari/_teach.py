"""The dock widget's 'Teach PFN your objects' group: add the fixed image to a training set on
disk, fine-tune the model on that set in a worker thread, then load the new weights and re-run.

It only wires library calls: :func:`pfn_napari.data.corrections.save_correction` writes an
image and its corrected instances, :func:`pfn_napari.finetune.finetune` trains. What the user
corrected is read from the image's 'PFN instances' layer as it is (painted, erased, re-counted);
the class of each instance is the ``class`` of its row in the layer's features: the one the
grouping gave it, the one chosen (or typed, a class the model does not have yet) in the group,
or for an id painted by hand the class of the last instance (a row is added when the painting
pauses). napari's status line and Export read the same table. A new clustering of the image
makes new instances and forgets the chosen classes.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from .. import layer_data as L
from ..errors import PFNError
from ..session import class_summary, finetune_dir, instance_classes, prepare_image

if TYPE_CHECKING:  # pragma: no cover
    from ._widget import PFNWidget

#: The training set's folder until the user picks another.
DEFAULT_FOLDER = Path("~") / "pfn-corrections"
#: The fine-tune's time budget until the user sets another (minutes).
DEFAULT_MINUTES = 5.0
#: Resolution of the fine-tune progress bar (the fraction of the time budget spent).
_BAR = 1000


def _mmss(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_text(p: Any) -> str:
    """One line for a :class:`~pfn_napari.finetune.FinetuneProgress`: ``"train: step 12/40,
    0:31 / 5:00, loss 0.412"`` (no step total when time alone ends it, no loss before one)."""
    steps = f"/{p.steps}" if p.steps else ""
    loss = f", loss {float(p.loss):.3f}" if p.loss is not None and np.isfinite(p.loss) else ""
    return f"{p.stage}: step {p.step}{steps}, {_mmss(p.elapsed_s)} / {_mmss(p.budget_s)}{loss}"


def duration(minutes: float) -> str:
    """``"12 s"`` under a minute, else ``"5.0 min"``."""
    return f"{60 * minutes:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


#: The numbers a fine-tune's before/after dictionaries hold that the widget reports.
REPORTED = ("APr@0.5", "mIoU")


def before_after(before: Any, after: Any) -> str:
    """``"APr@0.5 10.0 -> 31.2, mIoU 40.1 -> 55.0 on held-back images"``, or a sentence
    saying there were none (``before``/``after``: ``{metric: value}`` or None)."""
    if not before or not after:
        return "no before/after numbers (too few images to hold some back)"

    def num(v: Any) -> str:
        return "-" if v is None or not np.isfinite(float(v)) else f"{float(v):.1f}"

    from ..finetune import measurement_note

    keys = [k for k in REPORTED if k in before or k in after]
    note = measurement_note(before)
    return ", ".join(f"{k} {num(before.get(k))} -> {num(after.get(k))}" for k in keys) + \
        " on held-back images" + (f" ({note})" if note else "")


def card_of(result: Any) -> Path | None:
    """The model card :func:`~pfn_napari.finetune.finetune` writes beside the weights
    (``DIR/README.md``; None when there is none)."""
    path = Path(result.out_dir) / "README.md"
    return path if path.is_file() else None


def image_count(folder: Path) -> int:
    """The number of images in training set ``folder`` as the readers see it (0 before the
    first Add); a folder the readers refuse raises their :class:`PFNError`."""
    from ..data import open_dataset
    from ..data.corrections import correction_spec

    spec = correction_spec(folder)  # folder:IMAGES:MASKS (paths without ':')
    images = Path(spec.split(":")[1])
    if not images.is_dir() or not any(images.iterdir()):
        return 0
    return len(open_dataset(spec, split="all"))


class _Bridge(QObject):
    """Carries the fine-tune's progress from the worker thread to the widget (queued)."""

    progressed = Signal(object)


class TeachBox(QGroupBox):
    """Training-set folder, a class per instance, *Add this image to the training set*;
    time budget, *Fine-tune on the training set*, progress and Cancel."""

    def __init__(self, widget: "PFNWidget") -> None:
        super().__init__("Teach PFN your objects")
        self.w = widget
        self.busy = False
        self.last_result: Any = None  # the last FinetuneResult
        self._stop = False
        self._worker: Any = None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._refresh_timer = QTimer(self)  # painting: one refresh when the strokes pause
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(300)
        self._refresh_timer.timeout.connect(self.refresh)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        intro = QLabel("Fix the result (counts, paint or erase in 'PFN instances', a class "
                       "per instance), add the image; after a few, fine-tune.")
        intro.setWordWrap(True)
        form.addRow(intro)
        self._build_folder_row(form)
        self._build_class_row(form)
        self.add_button = QPushButton("Add this image to the training set")
        self.add_button.clicked.connect(self.add)
        form.addRow(self.add_button)
        self.minutes_spin = QDoubleSpinBox(decimals=2, minimum=0.01, maximum=600.0,
                                           singleStep=1.0, suffix=" min")
        self.minutes_spin.setValue(DEFAULT_MINUTES)
        self.minutes_spin.setToolTip("Time budget of the fine-tune (wall clock)")
        form.addRow("Time budget", self.minutes_spin)
        self.finetune_button = QPushButton("Fine-tune on the training set")
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.finetune_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, _BAR)
        self.progress.setValue(0)
        self.progress.setFormat("not started")
        form.addRow(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        self.update_enabled()

    def _build_folder_row(self, form: QFormLayout) -> None:
        self.folder_edit = QLineEdit(str(DEFAULT_FOLDER.expanduser()))
        self.folder_edit.setMinimumWidth(80)
        self.folder_edit.setToolTip("The training set: a folder of images and instance masks "
                                    "(the folder: reader reads it); created on the first Add")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form.addRow("Training set", row)

    def _build_class_row(self, form: QFormLayout) -> None:
        self.instance_spin = QSpinBox(minimum=1, maximum=65535)
        self.instance_spin.setToolTip("An instance id of 'PFN instances' (follows the label "
                                      "selected in the layer's controls)")
        self.instance_spin.valueChanged.connect(self._show_instance_class)
        self.class_combo = QComboBox()
        self.class_combo.setEditable(True)
        self.class_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.class_combo.setMinimumContentsLength(8)
        self.class_combo.setToolTip("Its class: pick one, or type a new name (a class the model "
                                    "does not have yet is learnt by the fine-tune)")
        self.set_class_button = QPushButton("Set class")
        self.set_class_button.clicked.connect(
            lambda: self.set_instance_class(self.instance_spin.value(),
                                            self.class_combo.currentText()))
        row = QHBoxLayout()
        row.addWidget(self.instance_spin)
        row.addWidget(self.class_combo, 1)
        row.addWidget(self.set_class_button)
        form.addRow("Instance", row)
        self.classes_label = QLabel("")
        self.classes_label.setWordWrap(True)
        form.addRow(self.classes_label)

    # ------------------------------------------------------------------ state
    @property
    def folder(self) -> Path:
        return Path(self.folder_edit.text().strip() or DEFAULT_FOLDER).expanduser()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training set folder", str(self.folder))
        if path:
            self.folder_edit.setText(path)

    def _layer(self) -> Any:
        return self.w.layer(L.INSTANCES)

    def classes(self) -> dict[int, str]:
        """``{instance id: class name}`` of 'PFN instances' as it is now ({} before a Run)."""
        layer = self._layer()
        if layer is None:
            return {}
        names = L.feature_classes(layer.features, self._model_classes(layer))
        return instance_classes(np.asarray(layer.data), layer.features, names)

    @staticmethod
    def _model_classes(layer: Any) -> tuple[str, ...]:
        return tuple(layer.metadata.get("class_names", ()))

    def _set_features(self, layer: Any, table: Any) -> None:
        """New features for 'PFN instances'; the widget's next clustering sets its own again."""
        layer.features = table
        self.w._layer_props.get(layer, {}).pop("features", None)

    def _describe_painted(self) -> None:
        """A features row for every id painted by hand that has none (the last instance's
        class), so napari's status line and Export name its class."""
        layer = self._layer()
        if layer is None:
            return
        table = L.with_painted_rows(np.asarray(layer.data), layer.features,
                                    self._model_classes(layer))
        if table is not None:
            self._set_features(layer, table)

    def update_enabled(self) -> None:
        has_layer = self._layer() is not None
        for w in (self.add_button, self.set_class_button):
            w.setEnabled(has_layer)
        self.finetune_button.setEnabled(not self.busy)
        self.cancel_button.setEnabled(self.busy and not self._stop)

    def refresh(self) -> None:
        """The class list and the instance table after a Run, an edit or a chosen class."""
        self._describe_painted()
        classes = self.classes()
        names = list(self.w.session.class_names)
        names += sorted({n for n in classes.values() if n not in names})
        current = self.class_combo.currentText()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems(names)
        self.class_combo.setCurrentText(current)
        self.class_combo.blockSignals(False)
        self._show_instance_class()
        self.classes_label.setText(
            "Instances: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
            if classes else "")
        self.update_enabled()

    def schedule_refresh(self) -> None:
        if self.w.synchronous:
            self.refresh()
        else:
            self._refresh_timer.start()

    def follow_selected(self, *_: Any) -> None:
        """The label picked in the instance layer's controls becomes the instance edited here."""
        layer = self._layer()
        if layer is not None and int(layer.selected_label) > 0:
            self.instance_spin.setValue(int(layer.selected_label))

    def _show_instance_class(self, *_: Any) -> None:
        name = self.classes().get(self.instance_spin.value())
        if name is not None:
            self.class_combo.setCurrentText(name)

    # ------------------------------------------------------------------ a class per instance
    def set_instance_class(self, label_id: int, name: str) -> bool:
        """Instance ``label_id`` of 'PFN instances' is of class ``name`` (any name: a new one
        is a class the fine-tune adds): its features row says so, for *Add this image*, for
        napari's status line and for Export."""
        layer, name = self._layer(), str(name).strip()
        if layer is None:
            return self._error("no instances yet: run PFN on an image first")
        ids = sorted(self.classes())
        if int(label_id) not in ids:
            return self._error(f"instance {int(label_id)} is not in '{layer.name}' (its "
                               f"instances: {', '.join(map(str, ids)) or 'none'}): pick one "
                               "of them or paint it first")
        if not name:
            return self._error("type or pick a class name for the instance")
        self._set_features(layer, L.with_instance_class(layer.features, int(label_id), name,
                                                        self._model_classes(layer)))
        self.refresh()
        self.w._message(f"instance {int(label_id)} is a {name} now "
                        f"({class_summary(self.classes())})", notify=False)
        return True

    # ------------------------------------------------------------------ add
    def add(self) -> Path | None:
        """Write the image of the last Run and its corrected instances to the training set."""
        from ..data.corrections import save_correction

        layer, image_name = self._layer(), self.w._image_layer_name
        if layer is None or image_name not in self.w.viewer.layers:
            self._error("nothing to add: run PFN on an image first, then fix its instances")
            return None
        image_layer = self.w.viewer.layers[image_name]
        data = image_layer.data if not image_layer.multiscale else image_layer.data[0]
        folder = self.folder
        try:
            image, _ = prepare_image(np.asarray(data), bool(image_layer.rgb), image_name)
            classes = self.classes()
            before = image_count(folder)
            path = save_correction(folder, image, np.asarray(layer.data), classes, image_name)
            total = image_count(folder)
        except (PFNError, OSError) as exc:
            self._error(f"could not add {image_name!r} to {folder}: {exc}")
            return None
        found = L.plural(len(classes), "instance") + (f": {class_summary(classes)}"
                                                       if classes else "")
        if total == before:  # the same photo again: its newer correction replaced the old one
            text = (f"updated {Path(path).stem} ({found}) in {folder} (still "
                    f"{L.plural(total, 'image')})")
        else:
            text = f"added {Path(path).stem} ({found}) to {folder} (now {L.plural(total, 'image')})"
        self.status_label.setText(text)
        self.w._message(text)
        return Path(path)

    # ------------------------------------------------------------------ fine-tune
    def _weights(self) -> str:
        """The weights the widget runs: the loaded model's file, else the Weights box
        ('default': the shipped weights)."""
        key = self.w.session.model_key
        text = key[0] if key is not None else self.w.weights_edit.text().strip()
        return text or "default"

    def finetune(self, minutes: float | None = None, sync: bool = False) -> None:
        """Fine-tune the model on the training set for ``minutes`` (default: the time budget
        box) into a new folder beside it; in a worker thread unless ``sync``."""
        if self.busy:
            return
        folder = self.folder
        try:
            empty = image_count(folder) == 0
        except (PFNError, OSError) as exc:
            self._error(f"cannot fine-tune on {folder}: {exc}")
            return
        if empty:
            self._error(f"the training set {folder} has no images yet: fix an image and press "
                        "'Add this image to the training set' first")
            return
        minutes = float(minutes if minutes is not None else self.minutes_spin.value())
        weights, out = self._weights(), finetune_dir(folder)
        self.busy, self._stop = True, False
        self.progress.setValue(0)
        self.progress.setFormat("starting")
        self.update_enabled()
        self.w._message(f"fine-tuning {Path(weights).name} on {folder} for {minutes:g} min "
                        f"into {out}", notify=False)
        job = self._job(weights, folder, out, minutes)
        if sync:
            try:
                result = job()
            except Exception as exc:  # noqa: BLE001 - shown to the user, see _failed
                self._failed(exc)
                return
            self._done(result, sync=True)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job, _ignore_errors=True)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        self._worker = worker
        worker.start()

    def _job(self, weights: str, folder: Path, out: Path, minutes: float):
        bridge, device = self._bridge, self.w.device_combo.currentText()

        def job() -> Any:
            from ..data.corrections import correction_spec
            from ..finetune import finetune

            return finetune(weights, correction_spec(folder), out, minutes, device=device,
                            progress=bridge.progressed.emit, should_stop=lambda: self._stop)

        return job

    def cancel(self) -> None:
        """Ask the running fine-tune to stop (it saves a checkpoint it can resume from)."""
        if self.busy:
            self._stop = True
            self.progress.setFormat("stopping…")
            self.update_enabled()

    def _on_progress(self, p: Any) -> None:
        budget = float(p.budget_s) or 1.0
        self.progress.setValue(int(min(1.0, float(p.elapsed_s) / budget) * _BAR))
        self.progress.setFormat(progress_text(p))

    def _finish(self) -> None:
        self.busy, self._worker = False, None
        self.update_enabled()

    def _done(self, result: Any, sync: bool = False) -> None:
        from ..finetune import KEPT_START_NOTE

        stopped = self._stop
        self._finish()
        self.last_result = result
        self.progress.setValue(_BAR)
        self.progress.setFormat(f"{'stopped' if stopped else 'done'}: "
                                f"{L.plural(result.steps, 'step')}")
        card = card_of(result)
        text = (f"fine-tuned {L.plural(result.steps, 'step')} in {duration(result.minutes)}"
                f"{' (cancelled)' if stopped else ''}: weights {result.weights}"
                f"{f', card {card}' if card else ''}; "
                f"{before_after(result.before, result.after)}."
                f"{' ' + KEPT_START_NOTE if result.kept_start else ''}")
        self.status_label.setText(text)
        if not Path(result.weights).is_file():
            self.w._message(f"{text} No weights to load; resume with pfn finetune ... "
                            f"--out {result.out_dir} --resume", error=True)
            return
        self._rerun(str(result.weights), text, sync)

    def _rerun(self, weights: str, text: str, sync: bool) -> None:
        """Load ``weights`` as if chosen in the Weights box and re-run the active image."""
        w = self.w
        w.weights_edit.setText(weights)
        image = w._image_layer_name
        if image is None or image not in w.viewer.layers or w.busy:
            w._message(f"{text} Press Run PFN to use the new weights.")
            return
        w.image_combo.setCurrentText(image)
        w._run_notes.append(f"{text[0].upper()}{text[1:]} With them,")
        w.run_sync() if sync else w.run()

    def _failed(self, exc: BaseException) -> None:
        self._finish()
        self.progress.setFormat("failed")
        if isinstance(exc, PFNError):
            self._error(f"fine-tune failed: {exc}")
        else:  # a bug or a library failure: one line for the user, the traceback in the log
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            self._error(f"fine-tune failed: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> bool:
        self.w._message(f"PFN: {text}", error=True)
        return False


__all__ = ["TeachBox", "DEFAULT_FOLDER", "DEFAULT_MINUTES"]
