"""The PFN dock widget: run the networks in a worker thread, show every stage as a layer, and
re-cluster on every change of sigma, tau, size threshold, method or instance counts.

The widget only wires library calls (:mod:`pfn_napari.inference`, :mod:`pfn_napari.grouping`
through :class:`~pfn_napari.session.PFNSession`) to layers
(:mod:`pfn_napari.layer_data`). Long work runs in ``napari.qt.threading`` workers; set
``widget.synchronous = True`` (tests, scripts) to run the same jobs in the calling thread.

Every image keeps its own set of PFN layers, named after it (``"PFN instances: photo"``, see
:func:`~pfn_napari.layer_data.layer_name`) and stacked right above it, so running image A
and then image B shows B's results on B and leaves A's on A. Run on the same image again
updates its set in place; the knobs act on the image of the last Run.

When the instance layer is overwritten: by **Run** (a new image or network output), and by a
re-clustering while *Keep hand edits* is off. Painting or erasing on 'PFN instances' turns
*Keep hand edits* on, so later changes of the knobs update every other layer and leave the
edited instances alone until the box is unticked.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from weakref import WeakKeyDictionary
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import layer_data as L
from ..config import GroupingConfig, ImageNetConfig
from ..errors import PFNError
from ..session import PFNSession, TuneParams, params_of, weights_grouping
from ._teach import TeachBox
from ._teaching import STAGES, stage_text

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: Steps of the network job, for the progress bar.
NETWORK_STEPS = ("loading the weights", "running the networks", "grouping")

#: Where napari lists the plugin's sample images (the manifest's display_name).
SAMPLE_MENU = "File > Open Sample > PFN instance segmentation"

#: A knob's change waits this long for the next one before re-clustering (typing, arrows).
DEBOUNCE_MS = 60


def grouping_methods() -> tuple[str, ...]:
    """Names of the grouping methods the library offers (``grouping.GROUPING_METHODS``)."""
    from ..grouping import GROUPING_METHODS

    return tuple(GROUPING_METHODS)


def available_devices() -> tuple[str, ...]:
    import torch

    return ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")


def sigma_role(method: str) -> str:
    """What sigma does in grouping method ``method``, one line (its ``sigma_role``; '' when
    the method does not say)."""
    from ..grouping import GROUPING_METHODS

    return str(getattr(GROUPING_METHODS.get(method), "sigma_role", "") or "")


def knob_help(method: str, g: GroupingConfig) -> dict[str, tuple[bool, str]]:
    """``{knob: (enabled, tooltip)}`` for sigma, tau and size threshold with ``method`` over
    grouping settings ``g``, from what the method declares
    (:func:`pfn_napari.grouping.method_knobs`): a knob that does not matter is disabled, its
    tooltip one line saying why."""
    from ..grouping import method_knobs

    knobs = method_knobs(method, g) if method in grouping_methods() else {}

    def tip(name: str) -> tuple[bool, str]:
        knob = knobs.get(name)
        if knob is None:
            return True, ""
        return (True, knob.why) if knob.matters else (False, f"Disabled: {knob.why}")

    return {"sigma": tip("sigma"), "tau": tip("tau"), "size": tip("min_size_frac")}


def describe(p: TuneParams) -> str:
    """``"vote, sigma 0.50, tau 0.50, size 0.10 %, ImageNet off"``."""
    return (f"{p.method}, sigma {p.sigma:.2f}, tau {p.tau:.2f}, size "
            f"{100 * p.min_size_frac:.2f} %, ImageNet {'off' if p.imagenet is False else 'on'}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _wrapped(text: str) -> QLabel:
    """A label that wraps its words (never clipped by a narrow dock)."""
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def _combo() -> QComboBox:
    """A combo box whose width does not follow its longest item (the dock stays narrow)."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    return combo


class _ColorBar(QWidget):
    """The colour bar of 'PFN locations' (napari draws none for images): the colormap as a
    strip, its low and high values at the ends."""

    def __init__(self, colormap: str) -> None:
        super().__init__()
        from napari.utils.colormaps import ensure_colormap

        rgba = ensure_colormap(colormap).map(np.linspace(0.0, 1.0, 256))  # (256, 4) in [0, 1]
        strip = np.ascontiguousarray(np.repeat((rgba[None, :, :3] * 255).astype(np.uint8),
                                               12, axis=0))  # (12, 256, 3)
        self._image = QImage(strip.data, 256, 12, 3 * 256, QImage.Format.Format_RGB888).copy()
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.low, self.high = QLabel(""), QLabel("")
        self.strip = QLabel()
        self.strip.setPixmap(QPixmap.fromImage(self._image))
        self.strip.setScaledContents(True)
        self.strip.setMinimumWidth(60)
        self.strip.setFixedHeight(12)
        lay.addWidget(self.low)
        lay.addWidget(self.strip, 1)
        lay.addWidget(self.high)

    def set_range(self, low: float, high: float, unit: str = "px") -> None:
        self.low.setText(f"{low:g}")
        self.high.setText(f"{high:g} {unit}")


def _is_pfn_layer(layer: Any) -> bool:
    """A layer the plugin (or :mod:`pfn_napari.notebook`) made, not an image of the user's."""
    return L.LAYER_KEY in layer.metadata or layer.name in L.LAYER_NAMES


def _signature(value: Any) -> Any:
    """A comparable stand-in for a layer property's value (arrays by their bytes)."""
    if isinstance(value, np.ndarray):
        return (value.shape, str(value.dtype), hash(value.tobytes()))
    if isinstance(value, dict):
        return tuple((repr(k), _signature(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return repr(value)


def _label_cmap(cmap: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=cmap)


class PFNWidget(QWidget):
    """Dock widget: weights, device, image layer, Run; knobs; counts; export; teaching mode.

    The controls sit in a scroll area (the dock fits any window height); the status line and
    the timing line stay below it, always visible.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = PFNSession()
        self.synchronous = False  # True: run jobs in the calling thread (tests, scripts)
        self.busy = False
        self.last_error: str | None = None
        self.last_message = ""
        self._worker: Any = None
        self._pending_recluster = False
        self._image_layer_name: str | None = None  # the image of the last Run
        self._running_image: str | None = None  # the image of the Run in progress
        self._count_spins: dict[int, QSpinBox] = {}
        self._overrides: dict[int, int] = {}  # class -> the count the user typed
        self._weights_grouping: GroupingConfig | None = None  # the settings the knobs came from
        self._weights_imagenet: ImageNetConfig | None = None
        self._knobs_from: str | None = None  # the weights file those settings are of
        self._touched: set[str] = set()  # knobs the user changed since (kept on Run)
        self._notes: list[str] = []  # sentences for the next re-clustering's message
        self._run_notes: list[str] = []  # sentences for the next Run's message
        self._stage = 0
        self._watched_layers: set[int] = set()
        # layer -> {property: signature of the value this widget last set} (see _set_changed)
        self._layer_props: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()
        self._build()
        self._refresh_image_layers()
        self._load_weights_settings(notify=False)
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_image_layers)
        layers.events.removed.connect(self._refresh_image_layers)
        layers.events.reordered.connect(self._refresh_image_layers)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """Narrow (the canvas keeps the window), as tall as the controls: the scroll area
        takes what is left."""
        inner = self.scroll.widget().sizeHint()
        return QSize(max(self.minimumSizeHint().width(), 380), inner.height() + 80)

    @property
    def count_boxes(self) -> Mapping[int, QSpinBox]:
        """Read-only ``{class id: its count spin box}``: one box per class the current
        clustering grouped (and per class whose count the user typed), showing the number of
        clusters it used."""
        return MappingProxyType(self._count_spins)

    # ================================================================== UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        inner = QWidget()
        body = QVBoxLayout(inner)
        body.addWidget(self._build_model_box())
        body.addWidget(self._build_grouping_box())
        body.addWidget(self._build_counts_box())
        body.addWidget(self._build_locations_box())
        self.export_button = QPushButton("Export instances (PNG + COCO JSON)…")
        self.export_button.clicked.connect(self._export_dialog)
        body.addWidget(self.export_button)
        body.addWidget(self._build_teaching_box())
        self.teach_box = TeachBox(self)  # add fixed images to a training set, fine-tune
        body.addWidget(self.teach_box)
        body.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(inner)
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        self.scroll.setMinimumWidth(inner.minimumSizeHint().width() + bar)
        outer.addWidget(self.scroll, 1)

        self.message_label = _wrapped("Choose an image layer and press Run PFN.")
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.timing_label = _wrapped("")
        for label in (self.message_label, self.timing_label):
            label.setContentsMargins(6, 0, 6, 0)
            outer.addWidget(label)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.recluster)
        self._update_enabled()

    def _build_model_box(self) -> QGroupBox:
        box = QGroupBox("Model and image")
        form = QFormLayout(box)
        self.weights_edit = QLineEdit()
        self.weights_edit.setMinimumWidth(80)
        self.weights_edit.setPlaceholderText("shipped default weights")
        self.weights_edit.setToolTip("A PFN weights or checkpoint file (.pt); empty: the shipped "
                                     "default (weights/pfn-lite0-voc.pt or $PFN_WEIGHTS)")
        self.weights_edit.textChanged.connect(self._load_weights_settings)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_weights)
        row = QHBoxLayout()
        row.addWidget(self.weights_edit)
        row.addWidget(browse)
        form.addRow("Weights", row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.device_combo.setToolTip("auto: the GPU when CUDA is available, else the CPU")
        form.addRow("Device", self.device_combo)
        self.image_combo = _combo()
        self.image_combo.setToolTip("The image layer to segment (RGB, RGBA or grayscale, 2-D)")
        form.addRow("Image layer", self.image_combo)
        self.run_button = QPushButton("Run PFN")
        self.run_button.clicked.connect(self.run)
        self.progress = QProgressBar()
        self.progress.setRange(0, len(NETWORK_STEPS))
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        form.addRow(self.run_button, self.progress)
        return box

    def _build_grouping_box(self) -> QGroupBox:
        box = QGroupBox("Grouping (re-clusters on change)")
        box.setToolTip("Changing a knob re-runs only the test-time grouping on the cached "
                       "network output, never the networks")
        form = QFormLayout(box)
        self.method_combo = _combo()
        self.method_combo.addItems(grouping_methods())
        form.addRow("Method", self.method_combo)
        self.sigma_spin = QDoubleSpinBox(decimals=3, minimum=0.005, maximum=5.0, singleStep=0.05)
        form.addRow("sigma", self.sigma_spin)
        self.tau_spin = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=10.0, singleStep=0.1)
        form.addRow("tau", self.tau_spin)
        self.size_spin = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=50.0, singleStep=0.1,
                                        suffix=" %")
        form.addRow("Size threshold", self.size_spin)
        self.prior_check = QCheckBox("Name missed objects (ImageNet)")
        self.prior_check.setToolTip("Objects the category network left as background, named by "
                                    "the ImageNet classifier (bus, dog, aeroplane ...), and, with "
                                    "the model's imagenet.check, the found objects of the "
                                    "classes it knows checked on their crops (dropped or "
                                    "relabelled); people never change. Only for models whose "
                                    "imagenet.weight is above 0 (the shipped one, where it "
                                    "starts off: it did not pay on every fold of the "
                                    "cross-validation, docs/imagenet.md)")
        form.addRow(self.prior_check)
        self.keep_edits_check = QCheckBox("Keep hand edits of 'PFN instances'")
        self.keep_edits_check.setToolTip("Ticked by painting on the instance layer: re-clustering "
                                         "then leaves it alone (Run always replaces it)")
        form.addRow(self.keep_edits_check)
        self.knobs_reset_button = QPushButton("Back to the weights' own settings")
        self.knobs_reset_button.setToolTip("Method, sigma, tau, size threshold and the ImageNet "
                                           "box as stored in the weights file")
        self.knobs_reset_button.clicked.connect(self.reset_knobs)
        form.addRow(self.knobs_reset_button)
        self._set_param_widgets(TuneParams())
        for name, w in (("sigma", self.sigma_spin), ("tau", self.tau_spin),
                        ("size", self.size_spin)):
            w.valueChanged.connect(lambda *_, n=name: self._knob_changed(n))
        self.method_combo.currentIndexChanged.connect(lambda *_: self._knob_changed("method"))
        self.prior_check.toggled.connect(lambda *_: self._knob_changed("prior"))
        return box

    def _build_counts_box(self) -> QGroupBox:
        self.counts_box = QGroupBox("Instance counts")
        self.counts_form = QFormLayout(self.counts_box)
        self.counts_form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.counts_info = _wrapped("Run PFN to see the counts.")
        self.counts_form.addRow(self.counts_info)
        self.reset_counts_button = QPushButton("Reset counts (forget what you typed)")
        self.reset_counts_button.clicked.connect(self.reset_counts)
        self.counts_form.addRow(self.reset_counts_button)
        return self.counts_box

    def _build_locations_box(self) -> QGroupBox:
        box = QGroupBox("PFN locations and arrows")
        form = QFormLayout(box)
        self.channel_combo = _combo()
        self.channel_combo.setToolTip("The location channel 'PFN locations' shows, in pixels of "
                                      "the image: center (cx, cy), top-left (lx, ly) and "
                                      "bottom-right (rx, ry) of the predicted box")
        self.channel_combo.currentIndexChanged.connect(self._show_locations)
        form.addRow("Channel", self.channel_combo)
        self.colorbar = _ColorBar(L.LOCATION_COLORMAP)
        form.addRow(self.colorbar)
        self.channel_label = _wrapped("")
        form.addRow(self.channel_label)
        self.arrows_label = _wrapped(f"Arrows: {L.VECTORS_LEGEND}.")
        form.addRow(self.arrows_label)
        return box

    def _build_teaching_box(self) -> QGroupBox:
        box = QGroupBox("Teaching mode")
        lay = QVBoxLayout(box)
        self.teach_check = QCheckBox("Step through the stages, one layer at a time")
        self.teach_check.toggled.connect(self.set_teaching)
        lay.addWidget(self.teach_check)
        row = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.prev_button.clicked.connect(lambda: self.show_stage(self._stage - 1))
        self.next_button.clicked.connect(lambda: self.show_stage(self._stage + 1))
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        lay.addLayout(row)
        self.stage_label = _wrapped("")
        lay.addWidget(self.stage_label)
        return box

    def _set_param_widgets(self, p: TuneParams) -> None:
        """Show ``p`` in the knobs without triggering a re-clustering."""
        widgets = (self.sigma_spin, self.tau_spin, self.size_spin, self.method_combo,
                   self.prior_check)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.sigma_spin.setValue(p.sigma)
            self.tau_spin.setValue(p.tau)
            self.size_spin.setValue(100.0 * p.min_size_frac)
            if self.method_combo.findText(p.method) < 0:
                self.method_combo.addItem(p.method)
            self.method_combo.setCurrentText(p.method)
            self.prior_check.setChecked(p.imagenet is not False)
        finally:
            for w in widgets:
                w.blockSignals(False)
        self._update_knob_help()

    def params(self) -> TuneParams:
        """The knobs and the counts the user typed, as they are now."""
        return TuneParams(method=self.method_combo.currentText(), sigma=self.sigma_spin.value(),
                          tau=self.tau_spin.value(), min_size_frac=self.size_spin.value() / 100.0,
                          count_override=tuple(sorted(self._overrides.items())),
                          imagenet=self.prior_check.isChecked())

    # ================================================================== the weights' settings
    def _grouping(self) -> GroupingConfig:
        """The grouping settings the knobs apply to: the loaded model's, else the weights'."""
        if self.session.model is not None:
            return self.session.model.config.grouping
        return self._weights_grouping or GroupingConfig()

    def _imagenet(self) -> ImageNetConfig:
        """The ImageNet step's settings: the loaded model's, else the weights'."""
        if self.session.model is not None:
            return self.session.model.config.imagenet
        return self._weights_imagenet or ImageNetConfig()

    def _load_weights_settings(self, *_: Any, notify: bool = True) -> None:
        """Show the grouping settings stored in the weights file in the knobs (before any
        Run), keeping the knobs the user changed; a file that cannot be read leaves the knobs
        as they are (Run says what is wrong with it)."""
        weights = self.weights_edit.text().strip()
        if weights == self._knobs_from:
            return
        try:
            file, grouping, imagenet = weights_grouping(weights or None)
        except PFNError:
            return
        self._knobs_from, self._weights_grouping = weights, grouping
        self._weights_imagenet = imagenet
        self._show_weights_settings(file.name, params_of(grouping, imagenet), notify)

    def _show_weights_settings(self, file: str, own: TuneParams, notify: bool) -> None:
        now = self.params()
        fields = {"method": "method", "sigma": "sigma", "tau": "tau", "size": "min_size_frac",
                  "prior": "imagenet"}
        kept = {f: getattr(now, fields[f]) for f in self._touched}
        self._set_param_widgets(replace(own, **{fields[f]: v for f, v in kept.items()}))
        text = f"Knobs: the grouping settings of {file} ({describe(own)})"
        if kept:
            text += "; kept what you set: " + ", ".join(
                f"{f} {_fmt(v)}" for f, v in sorted(kept.items()))
        self._message(text + ".", notify=False)
        self._update_enabled()

    def reset_knobs(self) -> None:
        """The weights' own grouping settings in every knob (forgets what the user set)."""
        self._touched.clear()
        own = params_of(self._grouping(), self._imagenet())
        self._set_param_widgets(own)
        note = f"Knobs back to the weights' own settings ({describe(own)})."
        if self.session.net is None:
            self._message(note, notify=False)
            return
        self._notes.append(note)  # said with the re-clustering's result
        self._schedule_recluster()

    def _knob_changed(self, name: str) -> None:
        self._touched.add(name)
        if name == "method":
            self._update_knob_help()
        self._schedule_recluster()

    def _update_knob_help(self) -> None:
        """Enable each knob the running method and the weights' grouping read, with a tooltip
        that says what it does there; disable the others with a one-line reason."""
        method = self.method_combo.currentText()
        g = self._grouping()
        help_ = knob_help(method, g)
        for spin, (enabled, tip) in zip((self.sigma_spin, self.tau_spin, self.size_spin),
                                        (help_["sigma"], help_["tau"], help_["size"])):
            spin.setEnabled(enabled)
            spin.setToolTip(tip)

    def _update_enabled(self) -> None:
        has_net = self.session.net is not None
        self.run_button.setEnabled(not self.busy)
        self.export_button.setEnabled(self.layer(L.INSTANCES) is not None)
        self.prior_check.setEnabled(self._imagenet().weight > 0)
        self.reset_counts_button.setEnabled(bool(self._overrides))
        for w in (self.prev_button, self.next_button):
            w.setEnabled(self.teach_check.isChecked() and has_net)
        if hasattr(self, "teach_box"):
            self.teach_box.update_enabled()
        self._update_knob_help()

    # ================================================================== messages
    def _message(self, text: str, error: bool = False, notify: bool = True) -> None:
        """One line in the widget and (``notify``) a napari notification; never a traceback."""
        from napari.utils.notifications import show_error, show_info

        self.last_message = text
        if error:
            self.last_error = text
        self.message_label.setText(text)
        self.message_label.setStyleSheet("color: #ff6b6b;" if error else "")
        if notify or error:
            (show_error if error else show_info)(text)

    def _on_error(self, exc: BaseException) -> None:
        self._finish_job()
        self._running_image = None
        self._pending_recluster = False
        self._run_notes.clear()
        if isinstance(exc, PFNError):
            self._message(f"PFN: {exc}", error=True)
        else:  # a bug or a library failure: one line for the user, the traceback in the log
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            self._message(f"PFN failed: {type(exc).__name__}: {exc}", error=True)

    # ================================================================== image layers
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and not _is_pfn_layer(layer)]

    def _refresh_image_layers(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._update_enabled()

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "PFN weights", "", "PyTorch files (*.pt *.pth);;All files (*)")
        if path:
            self.weights_edit.setText(path)

    # ================================================================== jobs
    def _start(self, job: Callable[[], Iterator[Any]], on_done: Callable[[Any], None],
               desc: str, steps: int) -> None:
        """Run generator ``job`` in a worker (or inline when ``synchronous``)."""
        self.busy = True
        self.last_error = None
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.progress.setFormat(desc)
        self._update_enabled()
        if self.synchronous:
            try:
                gen = job()
                while True:
                    self._on_yield(next(gen))
            except StopIteration as stop:
                on_done(stop.value)
            except Exception as exc:  # noqa: BLE001 - shown to the user, see _on_error
                self._on_error(exc)
            return
        from napari.qt.threading import create_worker

        # no napari progress bar: it is a tqdm bar in the terminal too; the dock shows progress
        worker = create_worker(job, _ignore_errors=True)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        self._worker = worker
        worker.start()

    def _on_yield(self, step: str) -> None:
        self.progress.setValue(min(self.progress.value() + 1, self.progress.maximum()))
        self.progress.setFormat(step)

    def _finish_job(self) -> None:
        self.busy = False
        self._worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._update_enabled()

    def _run_pending(self) -> None:
        """A knob changed while a job ran: one more re-clustering with the knobs as they are."""
        if self._pending_recluster and self.session.net is not None and self.last_error is None:
            self._pending_recluster = False
            self.recluster()

    def wait(self, timeout: float = 60.0) -> None:
        """Block (processing Qt events) until the running job is done (scripts, tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.busy or self._debounce.isActive():
            if time.monotonic() > end:
                raise TimeoutError("PFN job still running")
            QApplication.processEvents()
            time.sleep(0.01)

    # ================================================================== run
    def run(self) -> None:
        """Run the networks on the chosen image layer, then group and show every layer."""
        if self.busy:
            return
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            self._message(f"PFN: no image layer: open an image (File > Open, or {SAMPLE_MENU}) "
                          "and choose it in 'Image layer'", error=True)
            return
        layer = self.viewer.layers[name]
        data = np.asarray(layer.data if not layer.multiscale else layer.data[0])
        weights = self.weights_edit.text().strip() or None
        device = self.device_combo.currentText()
        self._running_image = name
        self._load_weights_settings(notify=False)  # the knobs show this file's settings
        shown = self._knobs_from == (weights or "")
        session = self.session
        # read the widgets here, not in the thread; counts start from the networks' own
        knobs = replace(self.params(), count_override=()) if shown else None
        rgb = bool(layer.rgb)

        def job() -> Iterator[str]:
            yield NETWORK_STEPS[0]
            session.load_model(weights, device)
            yield NETWORK_STEPS[1]
            session.run_network(data, rgb=rgb, name=name)
            yield NETWORK_STEPS[2]
            params = knobs or session.default_params()  # unreadable before: the model's own
            session.recluster(params)
            return params

        self._start(job, self._network_done, "running the networks", len(NETWORK_STEPS))

    def _network_done(self, params: TuneParams) -> None:
        self._finish_job()
        if self._running_image is not None:  # from now on the knobs act on this image
            self._image_layer_name, self._running_image = self._running_image, None
        s = self.session
        self._set_param_widgets(params)
        self._overrides.clear()  # a new image (or new networks): counts from the networks
        self.keep_edits_check.setChecked(False)
        self._show_network_layers()
        self._show_clustering(force_instances=True)
        notes = s.notes.messages(s.image.shape[:2])
        first, self._run_notes = self._run_notes, []
        self._message(" ".join([*first, f"{self._image_layer_name}: "
                                f"{L.plural(len(s.clustering.instances), 'instance')} (PFN ran on "
                                f"{s.model.device} in {s.network_seconds:.2f} s).",
                                *self._bring_to_top(), *self._clipped_note(), *notes]))
        if self.teach_check.isChecked():
            self.show_stage(self._stage)
        self._run_pending()

    def show_network_output(self, net: Any) -> None:
        """Group ``net`` (a :class:`~pfn_napari.structures.NetworkOutput` of the image of the
        last Run, e.g. its ground truth as an oracle) in place of the networks' output, and
        redraw every layer; the counts start from ``net``'s own."""
        self.session.use_network_output(net)
        self._overrides.clear()
        self._show_network_layers()
        was, self.synchronous = self.synchronous, True
        try:
            self.recluster()
        finally:
            self.synchronous = was

    def _bring_to_top(self) -> list[str]:
        """Put the image of the last Run and its PFN layers at the top of the layer list (and
        make them visible), so nothing the user opened hides them; a sentence saying so when
        they were not there."""
        layers = self.viewer.layers
        image = layers[self._image_layer_name]
        stack = [image, *[layer for base in L.STACK_ORDER
                          if (layer := self.layer(base)) is not None]]
        on_top = [layers[k] for k in range(len(layers) - len(stack), len(layers))]
        image.visible = True
        if not self.teach_check.isChecked():
            self.layer(L.INSTANCES).visible = True
        if on_top == stack:
            return []
        above = [layer.name for layer in layers[layers.index(image) + 1:]
                 if layer not in stack and layer.visible]
        for layer in stack:
            layers.move(layers.index(layer), len(layers))
        if not above:
            return []
        return [f"'{image.name}' and its PFN layers were moved to the top of the layer list "
                f"(they were under {', '.join(repr(n) for n in above[:3])}"
                f"{' ...' if len(above) > 3 else ''})."]

    # ================================================================== re-cluster
    def _schedule_recluster(self, *_: Any) -> None:
        if self.session.net is None:
            return
        if self.synchronous:
            self.recluster()
        else:
            self._debounce.start()

    def recluster(self) -> None:
        """Test-time steps only, on the cached network output, with the current knobs."""
        if self.session.net is None:
            return
        if self.busy:
            self._pending_recluster = True
            return
        params = self.params()
        session = self.session

        def job() -> Iterator[str]:
            yield "re-clustering"
            return session.recluster(params)

        self._start(job, self._recluster_done, "re-clustering", 1)

    def _recluster_done(self, _: Any) -> None:
        self._finish_job()
        self._show_clustering(force_instances=False)
        c = self.session.clustering
        found = L.plural(len(c.instances), "instance")
        if self.keep_edits_check.isChecked():
            text = (f"{self._image_layer_name}: re-clustered into {found}; your edited "
                    f"'{L.INSTANCES}' are kept (untick 'Keep hand edits' to see the new ones).")
        else:
            text = (f"{self._image_layer_name}: {found} after re-clustering in "
                    f"{c.seconds * 1000:.0f} ms (networks not re-run).")
        notes, self._notes = self._notes, []
        self._message(" ".join([*notes, text, *self._clipped_note()]), notify=False)
        if self.teach_check.isChecked():
            self.show_stage(self._stage)  # keep showing only the current stage
        self._run_pending()

    # ================================================================== counts
    def _sync_count_boxes(self) -> None:
        """One box per class the current clustering grouped (and per class the user typed a
        count for), showing the number of clusters it used; boxes of other classes go."""
        c = self.session.clustering
        shown = sorted(set(c.cluster_counts) | set(self._overrides))
        for cls in [k for k in self._count_spins if k not in shown]:
            self.counts_form.removeRow(self._count_spins.pop(cls))
        found: dict[int, int] = {}
        for k in c.instances.classes:
            found[int(k)] = found.get(int(k), 0) + 1
        for row, cls in enumerate(shown):
            spin = self._count_spins.get(cls)
            if spin is None:
                spin = self._add_count_box(cls, row)
            spin.blockSignals(True)
            spin.setValue(self._overrides.get(cls, c.cluster_counts.get(cls, 0)))
            spin.blockSignals(False)
            self._label_count_box(cls, spin, found.get(cls, 0))
        if shown:
            self.counts_info.setText("Clusters per class the grouping used (the count network's "
                                     "number, rounded, or the boxes its pixels vote for); type "
                                     "a number to re-cluster into that many: it stays until "
                                     "you reset the counts.")
        else:
            self.counts_info.setText("No class present: every predicted count is at most tau, "
                                     "or the category map is all background.")
        self.reset_counts_button.setEnabled(bool(self._overrides))

    def _add_count_box(self, cls: int, row: int) -> QSpinBox:
        spin = QSpinBox(minimum=0, maximum=99)
        spin.valueChanged.connect(lambda value, c=cls: self._count_typed(c, value))
        self._count_spins[cls] = spin
        self.counts_form.insertRow(1 + row, _wrapped(""), spin)  # under the info line
        return spin

    def _label_count_box(self, cls: int, spin: QSpinBox, found: int) -> None:
        name = self.session.class_names[cls - 1]
        pred = float(self.session.predicted_counts()[cls - 1])
        yours = cls in self._overrides
        label = self.counts_form.labelForField(spin)
        label.setText(f"{name} (predicted {pred:.2f}, found {found}"
                      f"{', your count' if yours else ''})")
        label.setStyleSheet("font-weight: bold;" if yours else "")
        spin.setToolTip(f"Cluster {name} into this many instances (count network: {pred:.2f}; "
                        f"the grouping used {self.session.clustering.cluster_counts.get(cls, 0)})."
                        " A number you type stays until 'Reset counts'; it also feeds the "
                        "refinement: 0 (or at most tau) takes the class out when another class "
                        "is present")

    def _count_typed(self, cls: int, value: int) -> None:
        self._overrides[cls] = int(value)
        self._schedule_recluster()

    def reset_counts(self) -> None:
        """Forget the counts the user typed: the grouping's own numbers again."""
        if self._overrides:
            self._overrides.clear()
            self._schedule_recluster()

    def set_count(self, class_id: int, value: int) -> None:
        """Override the instance count of class ``class_id`` (as typing in its box)."""
        if class_id not in self._count_spins:
            raise KeyError(f"class {class_id} has no count box (present: {sorted(self._count_spins)})")
        spin = self._count_spins[class_id]
        if spin.value() == int(value):  # typing the number it shows: keep it, re-cluster
            self._count_typed(class_id, int(value))
        else:
            spin.setValue(int(value))

    # ================================================================== layers
    def layer(self, base: str, image: str | None = None) -> Any:
        """The PFN layer ``base`` (one of :data:`~pfn_napari.napari._layers.LAYER_NAMES`) of
        image layer ``image`` (default: the image of the last Run), or None.

        Found by the owner tags in its metadata (renaming the layer does not lose it); a layer
        named exactly ``base`` with no owner (added by :mod:`pfn_napari.notebook`) is adopted.
        """
        image = image if image is not None else self._image_layer_name
        if image is None:
            return None
        untagged = None
        for layer in self.viewer.layers:
            md = layer.metadata
            if md.get(L.LAYER_KEY) == base and md.get(L.IMAGE_KEY) == image:
                return layer
            if layer.name == base and L.LAYER_KEY not in md:
                untagged = layer
        return untagged

    def _upsert(self, base: str, kind: str, data: np.ndarray, kwargs: dict[str, Any],
                visible: bool | None = None, channel: str | None = None) -> Any:
        """Update this image's layer ``base`` in place, or add it; never a second one."""
        from napari.layers import Image, Labels, Vectors

        kwargs = dict(kwargs)
        signatures = {key: _signature(value) for key, value in kwargs.items()}
        if "colormap" in kwargs and isinstance(kwargs["colormap"], dict):
            kwargs["colormap"] = _label_cmap(kwargs["colormap"])
        image = self._image_layer_name
        kwargs["metadata"] = {**kwargs.get("metadata", {}), L.LAYER_KEY: base, L.IMAGE_KEY: image}
        name = L.layer_name(base, image, channel)
        layers = self.viewer.layers
        layer = self.layer(base)
        cls = {"image": Image, "labels": Labels, "vectors": Vectors}[kind]
        if layer is not None and isinstance(layer, cls) and np.ndim(layer.data) == np.ndim(data):
            if kind == "vectors":  # features and colours follow the number of vectors
                layer.data = data
                layer.features = kwargs.pop("features")
                # napari does not re-slice a hidden layer: its view still holds the old
                # vectors, and the canvas's colour update would index past the new colours
                layer.set_view_slice()
                layer.edge_color = kwargs.pop("edge_color")
            else:
                layer.data = data
            self._set_changed(layer, kwargs, signatures)
            if visible is not None:
                layer.visible = visible
            if layer.name != base and layer.name != name:  # an adopted layer keeps its name
                layer.name = name
            return layer
        if layer is not None:  # another kind or shape: replace it, in the same place
            index = layers.index(layer)
            was_visible = layer.visible
            name = layer.name if layer.name == base else name
            layers.remove(layer)
            new = getattr(self.viewer, f"add_{kind}")(data, name=name, visible=was_visible,
                                                      **kwargs)
            layers.move(layers.index(new), index)
            return new
        add = getattr(self.viewer, f"add_{kind}")
        return add(data, name=name, visible=True if visible is None else visible, **kwargs)

    def _set_changed(self, layer: Any, kwargs: dict[str, Any], signatures: dict[str, Any]
                     ) -> None:
        """Set only the layer properties that changed since this widget last set them: each
        setter redraws (a colormap or a scale costs as much as the data)."""
        seen = self._layer_props.setdefault(layer, {})
        for key, value in kwargs.items():
            if key == "metadata" or seen.get(key) != signatures[key]:
                setattr(layer, key, value)
                seen[key] = signatures.get(key)

    def _place_above_image(self) -> None:
        """Stack this image's PFN layers right above it (order :data:`L.STACK_ORDER`)."""
        layers = self.viewer.layers
        if self._image_layer_name not in layers:
            return
        below = layers[self._image_layer_name]
        for base in L.STACK_ORDER:
            layer = self.layer(base)
            if layer is None:
                continue
            src, dest = layers.index(layer), layers.index(below) + 1
            if src != dest:
                layers.move(src, dest)  # inserts before ``dest`` of the list as it was
            below = layer

    def _show_network_layers(self) -> None:
        """Layers that depend only on the network output (category map, locations)."""
        s = self.session
        first = self.layer(L.CATEGORY) is None
        data, kw = L.category_layer(s.net, s.geom, s.class_names)
        self._upsert(L.CATEGORY, "labels", data, kw, visible=False if first else None)
        channels = L.location_channels(s.net.encoding)
        current = self.channel_combo.currentData()
        self.channel_combo.blockSignals(True)
        self.channel_combo.clear()
        for name in channels:
            self.channel_combo.addItem(f"{name}: {L.CHANNEL_MEANING.get(name, name)}", name)
        self.channel_combo.setCurrentIndex(channels.index(current) if current in channels else 0)
        self.channel_combo.blockSignals(False)
        self._show_locations(first=first)

    def _show_locations(self, *_: Any, first: bool = False) -> None:
        """'PFN locations' shows the channel picked in 'Location channel' (one 2-D plane)."""
        s = self.session
        channel = self.channel_combo.currentData()
        if s.net is None or channel is None or self._image_layer_name is None:
            self.channel_label.setText("")
            return
        data, kw = L.location_channel_layer(s.net, s.geom, channel)
        layer = self._upsert(L.LOCATIONS, "image", data, kw, visible=False if first else None,
                             channel=channel)
        layer.contrast_limits = kw["contrast_limits"]
        self.colorbar.set_range(*kw["contrast_limits"])
        self.channel_label.setText(f"'{layer.name}' shows {channel} "
                                   f"({L.CHANNEL_MEANING.get(channel, channel)}) in pixels of the "
                                   "image, on the category map's objects only (background "
                                   "transparent); pick another channel above.")

    def _clipped_note(self) -> list[str]:
        """A sentence when some arrows point at a center outside the image (cut at the border)."""
        layer = self.layer(L.VECTORS)
        if layer is None or "clipped" not in layer.features:
            return []
        n = int(np.asarray(layer.features["clipped"], bool).sum())
        if n == 0:
            return []
        verb = "points" if n == 1 else "point"
        return [f"{L.plural(n, 'arrow')} of {len(layer.features)} {verb} at a center outside "
                "the image and stop at its border."]

    def _show_clustering(self, force_instances: bool) -> None:
        """Layers that depend on the grouping; the instance layer unless hand edits are kept."""
        s = self.session
        c = s.clustering
        first = self.layer(L.REFINED) is None
        data, kw = L.refined_layer(c.full_class_map, s.geom, s.class_names)
        self._upsert(L.REFINED, "labels", data, kw, visible=False if first else None)
        data, kw = L.clusters_layer(c.grid_labels, s.geom)
        self._upsert(L.CLUSTERS, "labels", data, kw, visible=False if first else None)
        keep = self.keep_edits_check.isChecked() and not force_instances
        if not keep:
            data, kw = L.instances_layer(c.instances, s.class_names)
            kw["metadata"] = {"class_names": s.class_names, "image_layer": self._image_layer_name,
                              "params": c.params}
            layer = self._upsert(L.INSTANCES, "labels", data, kw)
            self._watch_edits(layer)
        fg = c.refined_class_map > 0
        prior_ids = np.flatnonzero(c.from_prior)  # (M,) 0-based
        data, kw = L.vectors_layer(s.centers, fg, c.grid_labels, s.geom,
                                   prior=(c.instances.masks[prior_ids], prior_ids + 1))
        self._upsert(L.VECTORS, "vectors", data, kw)
        if force_instances:  # a Run: the set goes (back) on top of its image
            self._place_above_image()
        self._sync_count_boxes()
        where = ("your edited instances kept" if keep
                 else L.plural(len(c.instances), "instance"))
        ran = f"networks {s.network_seconds:.2f} s, " if force_instances else ""  # a Run
        self.timing_label.setText(f"{ran}grouping {c.seconds * 1000:.0f} ms, {where}"
                                  f"{'' if force_instances else ' (networks not re-run)'}")
        self.teach_box.refresh()
        self._update_enabled()

    def _watch_edits(self, layer: Any) -> None:
        if id(layer) in self._watched_layers:
            return
        layer.events.paint.connect(self._on_paint)
        layer.events.selected_label.connect(self.teach_box.follow_selected)
        self._watched_layers.add(id(layer))

    def _on_paint(self, *_: Any) -> None:
        self.teach_box.schedule_refresh()
        if not self.keep_edits_check.isChecked():
            self.keep_edits_check.setChecked(True)
            self.last_message = ("hand edits on 'PFN instances' are kept: re-clustering no longer "
                                 "replaces them (untick 'Keep hand edits' to re-cluster over them)")
            self.message_label.setText(self.last_message)

    # ================================================================== export
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export instances", "instances.png",
                                              "Instance-id PNG + COCO JSON (*.png)")
        if path:
            self.export(path)

    def export(self, path: str) -> list[str]:
        """Write 'PFN instances' (with any hand edits) as ``STEM.png`` + ``STEM.json``."""
        from ._writer import write_instances

        layer = self.layer(L.INSTANCES)
        if layer is None:
            self._message("PFN: nothing to export: run PFN first", error=True)
            return []
        image = layer.metadata.get(L.IMAGE_KEY)
        photo = self.viewer.layers[image].source.path if image in self.viewer.layers else None
        metadata = {**layer.metadata, "image_path": photo}  # the JSON's file_name
        try:
            written = write_instances(path, layer.data, {"features": layer.features,
                                                         "metadata": metadata,
                                                         "name": layer.name})
        except (PFNError, OSError) as exc:
            self._message(f"PFN: export failed: {exc}", error=True)
            return []
        self._message(f"exported {', '.join(written)}")
        return written

    # ================================================================== teaching
    def set_teaching(self, on: bool) -> None:
        self._update_enabled()
        if on:
            self.show_stage(self._stage)
        else:
            self.stage_label.setText("")

    def show_stage(self, index: int) -> None:
        """Show stage ``index`` (0..5) alone over the image, with its sentence."""
        self._stage = int(np.clip(index, 0, len(STAGES) - 1))
        stage = STAGES[self._stage]
        present = {n: self.layer(n) for n in L.LAYER_NAMES if self.layer(n) is not None}
        method = self.method_combo.currentText()
        text = stage_text(stage, method, sigma_role(method))
        if not present:
            self.stage_label.setText(f"<b>{stage.title}</b><br>{text}<br><i>Run PFN first "
                                     "to see this stage.</i>")
            return
        for name, layer in present.items():
            layer.visible = name == stage.layer
        self.stage_label.setText(f"<b>{stage.title}</b> ({self._stage + 1}/{len(STAGES)})"
                                 f"<br>{text}")
        self.prev_button.setEnabled(self._stage > 0)
        self.next_button.setEnabled(self._stage < len(STAGES) - 1)

    # ================================================================== sync helpers
    def adopt_session(self, session: PFNSession, clustering: Any, image_name: str) -> None:
        """Show a session another front end ran (the notebook's ``open_in_napari``): its
        knobs, count boxes and layers for the image layer ``image_name``, as a Run would
        leave them; the session's count overrides are typed in the count boxes."""
        self.session = session
        session.clustering = clustering
        self.image_combo.setCurrentText(image_name)
        self._image_layer_name = image_name
        self._network_done(clustering.params)
        self.synchronous = True
        try:
            for cls, number in clustering.params.count_override:
                try:
                    self.set_count(cls, number)
                except KeyError:
                    pass
        finally:
            self.synchronous = False

    # ================================================================== teach (see _teach.py)
    @property
    def training_folder(self) -> Path:
        """The training set's folder ('Training set' in the Teach group)."""
        return self.teach_box.folder

    @training_folder.setter
    def training_folder(self, folder: str | Path) -> None:
        self.teach_box.folder_edit.setText(str(folder))

    def set_instance_class(self, label_id: int, name: str) -> bool:
        """Instance ``label_id`` of 'PFN instances' is a ``name`` (a new name: a new class)."""
        return self.teach_box.set_instance_class(label_id, name)

    def add_to_training_set(self) -> Path | None:
        """Press 'Add this image to the training set': the written image's path, or None."""
        return self.teach_box.add()

    def finetune_sync(self, minutes: float | None = None) -> Any:
        """Press 'Fine-tune on the training set' and block until it is done and the active
        image is re-run with the new weights (scripts and tests): the FinetuneResult, or None
        when it failed (the message says why)."""
        box = self.teach_box
        box.last_result = None
        was = self.synchronous
        self.synchronous = True
        try:
            box.finetune(minutes, sync=True)
        finally:
            self.synchronous = was
        return box.last_result

    def run_sync(self) -> None:
        """Run, blocking until the layers are there (scripts and tests)."""
        was = self.synchronous
        self.synchronous = True
        try:
            self.run()
        finally:
            self.synchronous = was
