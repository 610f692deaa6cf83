"""The PFN dock widget: run the networks in a worker thread, show every stage as a layer, and
re-cluster on every change of sigma, tau, size threshold, method or instance counts.

The widget only wires library calls (:mod:`pfn_napari.inference`, :mod:`pfn_napari.grouping`
through :class:`~pfn_napari.napari._session.PFNSession`) to layers
(:mod:`pfn_napari.napari._layers`). Long work runs in ``napari.qt.threading`` workers; set
``widget.synchronous = True`` (tests, scripts) to run the same jobs in the calling thread.

Every image keeps its own set of PFN layers, named after it (``"PFN instances: photo"``, see
:func:`~pfn_napari.napari._layers.layer_name`) and stacked right above it, so running image A
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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
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
    QVBoxLayout,
    QWidget,
)

from ..errors import PFNError
from . import _layers as L
from ._session import PFNSession, TuneParams
from ._teaching import STAGES

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: Steps of the network job, for the progress bar.
NETWORK_STEPS = ("loading the weights", "running the networks", "grouping")

#: Where napari lists the plugin's sample images (the manifest's display_name).
SAMPLE_MENU = "File > Open Sample > PFN instance segmentation"


def grouping_methods() -> tuple[str, ...]:
    """Names of the grouping methods the library offers (``grouping.GROUPING_METHODS``)."""
    from ..grouping import GROUPING_METHODS

    return tuple(GROUPING_METHODS)


def available_devices() -> tuple[str, ...]:
    import torch

    return ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")


def _is_pfn_layer(layer: Any) -> bool:
    """A layer the plugin (or :mod:`pfn_napari.notebook`) made, not an image of the user's."""
    return L.LAYER_KEY in layer.metadata or layer.name in L.LAYER_NAMES


def _label_cmap(cmap: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=cmap)


class PFNWidget(QWidget):
    """Dock widget: weights, device, image layer, Run; knobs; counts; export; teaching mode."""

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
        self._count_defaults: dict[int, int] = {}
        self._stage = 0
        self._watched_layers: set[int] = set()
        self._build()
        self._refresh_image_layers()
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_image_layers)
        layers.events.removed.connect(self._refresh_image_layers)
        layers.events.reordered.connect(self._refresh_image_layers)

    # ================================================================== UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)

        box = QGroupBox("Model and image")
        form = QFormLayout(box)
        self.weights_edit = QLineEdit()
        self.weights_edit.setMinimumWidth(120)
        self.weights_edit.setPlaceholderText("shipped default weights")
        self.weights_edit.setToolTip("A PFN weights or checkpoint file (.pt); empty: the shipped "
                                     "default (weights/pfn-lite0-voc.pt or $PFN_WEIGHTS)")
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
        self.image_combo = QComboBox()
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
        outer.addWidget(box)

        self.message_label = QLabel("Choose an image layer and press Run PFN.")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.message_label)

        box = QGroupBox("Grouping (re-clusters on change)")
        form = QFormLayout(box)
        self.method_combo = QComboBox()
        self.method_combo.addItems(grouping_methods())
        form.addRow("Method", self.method_combo)
        self.sigma_spin = QDoubleSpinBox(decimals=3, minimum=0.005, maximum=5.0, singleStep=0.05)
        box.setToolTip("Changing a knob re-runs only the test-time grouping on the cached "
                       "network output, never the networks")
        self.sigma_spin.setToolTip("Width of the similarity kernel on predicted locations and "
                                   "positions (normalised coordinates); smaller splits more")
        form.addRow("sigma", self.sigma_spin)
        self.tau_spin = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=10.0, singleStep=0.1)
        self.tau_spin.setToolTip("A class is present when its predicted count exceeds tau")
        form.addRow("tau", self.tau_spin)
        self.size_spin = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=50.0, singleStep=0.1,
                                        suffix=" %")
        self.size_spin.setToolTip("Clusters smaller than this share of their class mask are dropped")
        form.addRow("Size threshold", self.size_spin)
        self.prior_check = QCheckBox("Name missed objects (ImageNet prior)")
        self.prior_check.setToolTip("Objects the category network left as background, named by "
                                    "the ImageNet classifier (bus, dog, aeroplane ...), and, with "
                                    "the model's grouping.prior_check, the found objects of the "
                                    "classes it knows checked on their crops (dropped or "
                                    "relabelled); people never change. Only for models whose "
                                    "grouping has a prior_weight (the shipped one)")
        form.addRow(self.prior_check)
        self.keep_edits_check = QCheckBox("Keep hand edits of 'PFN instances'")
        self.keep_edits_check.setToolTip("Ticked by painting on the instance layer: re-clustering "
                                         "then leaves it alone (Run always replaces it)")
        form.addRow(self.keep_edits_check)
        self.timing_label = QLabel("")
        self.timing_label.setWordWrap(True)
        form.addRow(self.timing_label)
        outer.addWidget(box)
        self._set_param_widgets(TuneParams())
        for w in (self.sigma_spin, self.tau_spin, self.size_spin):
            w.valueChanged.connect(self._schedule_recluster)
        self.method_combo.currentIndexChanged.connect(self._schedule_recluster)
        self.prior_check.toggled.connect(self._schedule_recluster)

        self.counts_box = QGroupBox("Instance counts")
        self.counts_form = QFormLayout(self.counts_box)
        self.counts_info = QLabel("Run PFN to see the predicted counts.")
        self.counts_info.setWordWrap(True)
        self.counts_form.addRow(self.counts_info)
        reset = QPushButton("Reset counts to predicted")
        reset.clicked.connect(self.reset_counts)
        self.counts_form.addRow(reset)
        outer.addWidget(self.counts_box)

        box = QGroupBox("PFN locations")
        form = QFormLayout(box)
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("The location channel 'PFN locations' shows, in pixels of "
                                      "the image: center (cx, cy), top-left (lx, ly) and "
                                      "bottom-right (rx, ry) of the predicted box")
        self.channel_combo.currentIndexChanged.connect(self._show_locations)
        form.addRow("Location channel", self.channel_combo)
        self.channel_label = QLabel("")
        self.channel_label.setWordWrap(True)
        form.addRow(self.channel_label)
        outer.addWidget(box)

        self.export_button = QPushButton("Export instances (PNG + COCO JSON)…")
        self.export_button.clicked.connect(self._export_dialog)
        outer.addWidget(self.export_button)

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
        self.stage_label = QLabel("")
        self.stage_label.setWordWrap(True)
        lay.addWidget(self.stage_label)
        outer.addWidget(box)
        outer.addStretch(1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self.recluster)
        self._update_enabled()

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
            self.prior_check.setChecked(p.prior is not False)
        finally:
            for w in widgets:
                w.blockSignals(False)

    def params(self) -> TuneParams:
        """The knobs and count boxes as they are now."""
        override = tuple(sorted((c, spin.value()) for c, spin in self._count_spins.items()
                                if spin.value() != self._count_defaults.get(c)))
        return TuneParams(method=self.method_combo.currentText(), sigma=self.sigma_spin.value(),
                          tau=self.tau_spin.value(), min_size_frac=self.size_spin.value() / 100.0,
                          count_override=override, prior=self.prior_check.isChecked())

    def _update_enabled(self) -> None:
        has_net = self.session.net is not None
        self.run_button.setEnabled(not self.busy)
        self.export_button.setEnabled(self.layer(L.INSTANCES) is not None)
        model = self.session.model
        self.prior_check.setEnabled(model is not None and model.config.grouping.prior_weight > 0)
        for w in (self.prev_button, self.next_button):
            w.setEnabled(self.teach_check.isChecked() and has_net)

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

        worker = create_worker(job, _progress={"total": steps, "desc": f"PFN: {desc}"},
                               _ignore_errors=True)
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
        first_run = self.session.model is None or (str(weights or ""), device) != self.session.model_key
        session = self.session
        knobs = None if first_run else self.params()  # read the widgets here, not in the thread
        rgb = bool(layer.rgb)

        def job() -> Iterator[str]:
            yield NETWORK_STEPS[0]
            session.load_model(weights, device)
            yield NETWORK_STEPS[1]
            session.run_network(data, rgb=rgb, name=name)
            yield NETWORK_STEPS[2]
            p = knobs or session.default_params()  # a new model starts from its own defaults
            params = TuneParams(p.method, p.sigma, p.tau, p.min_size_frac, (),  # counts: predicted
                                p.prior)
            session.recluster(params)
            return params

        self._start(job, self._network_done, "running the networks", len(NETWORK_STEPS))

    def _network_done(self, params: TuneParams) -> None:
        self._finish_job()
        if self._running_image is not None:  # from now on the knobs act on this image
            self._image_layer_name, self._running_image = self._running_image, None
        s = self.session
        self._set_param_widgets(params)
        self._build_count_spins()
        self.keep_edits_check.setChecked(False)
        self._show_network_layers()
        self._show_clustering(force_instances=True)
        notes = s.notes.messages(s.image.shape[:2])
        self._message(" ".join([f"{self._image_layer_name}: "
                                f"{L.plural(len(s.clustering.instances), 'instance')} (PFN ran on "
                                f"{s.model.device} in {s.network_seconds:.2f} s).",
                                *self._clipped_note(), *notes]))
        if self.teach_check.isChecked():
            self.show_stage(self._stage)
        self._run_pending()

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
        self._message(" ".join([text, *self._clipped_note()]), notify=False)
        if self.teach_check.isChecked():
            self.show_stage(self._stage)  # keep showing only the current stage
        self._run_pending()

    # ================================================================== counts
    def _build_count_spins(self) -> None:
        """One spin box per class that is present (predicted count > tau, or on the map)."""
        for spin in self._count_spins.values():
            self.counts_form.removeRow(spin)
        self._count_spins.clear()
        self._count_defaults.clear()
        s = self.session
        counts = s.predicted_counts()
        on_map = set(np.unique(s.net.class_probs.argmax(0)).tolist()) - {0}
        tau = self.tau_spin.value()
        present = [c for c in range(1, len(counts) + 1) if counts[c - 1] > tau or c in on_map]
        names = s.class_names
        used = s.instance_numbers(self.params())  # the knobs' k, before any override
        source = s.model.config.grouping.count_source
        for c in present:
            spin = QSpinBox(minimum=0, maximum=99)
            # the number the grouping used: the head's count rounded, or the votes'
            default = used.get(c, max(1, int(round(float(counts[c - 1])))))
            spin.setValue(default)
            how = ("" if source == "head" else
                   f"; {default} from the boxes its pixels vote for (grouping.count_source={source})")
            spin.setToolTip(f"Cluster {names[c - 1]} into this many instances (count network: "
                            f"{counts[c - 1]:.2f}{how}); change it to override. The "
                            "override also feeds the refinement: 0 (or at most tau) takes the "
                            "class out when another class is present")
            spin.valueChanged.connect(self._schedule_recluster)
            self._count_spins[c] = spin
            self._count_defaults[c] = default
            self.counts_form.insertRow(self.counts_form.rowCount() - 1,
                                       f"{names[c - 1]} ({counts[c - 1]:.2f})", spin)
        if present:
            self.counts_info.setText("Predicted count of each class present (> tau or on the "
                                     "category map); change a box to re-cluster into that many.")
        else:
            self.counts_info.setText("No class present: every predicted count is at most tau "
                                     "and the category map is all background.")

    def reset_counts(self) -> None:
        changed = False
        for c, spin in self._count_spins.items():
            if spin.value() != self._count_defaults[c]:
                spin.blockSignals(True)
                spin.setValue(self._count_defaults[c])
                spin.blockSignals(False)
                changed = True
        if changed:
            self._schedule_recluster()

    def set_count(self, class_id: int, value: int) -> None:
        """Override the instance count of class ``class_id`` (as typing in its box)."""
        if class_id not in self._count_spins:
            raise KeyError(f"class {class_id} has no count box (present: {sorted(self._count_spins)})")
        self._count_spins[class_id].setValue(int(value))

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
                layer.edge_color = kwargs.pop("edge_color")
            else:
                layer.data = data
            for key, value in kwargs.items():
                setattr(layer, key, value)
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
        self.channel_label.setText(f"'{layer.name}' shows {channel} "
                                   f"({L.CHANNEL_MEANING.get(channel, channel)}) in pixels of the "
                                   f"image; pick another channel above.")

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
        data, kw = L.vectors_layer(s.centers, fg, c.grid_labels, s.geom)
        self._upsert(L.VECTORS, "vectors", data, kw)
        if force_instances:  # a Run: the set goes (back) on top of its image
            self._place_above_image()
        self._update_counts_text()
        where = ("your edited instances kept" if keep
                 else L.plural(len(c.instances), "instance"))
        self.timing_label.setText(f"grouping {c.seconds * 1000:.0f} ms, {where} "
                                  "(networks not re-run)")
        self._update_enabled()

    def _update_counts_text(self) -> None:
        c = self.session.clustering
        got: dict[int, int] = {}
        for k in c.instances.classes:
            got[int(k)] = got.get(int(k), 0) + 1
        names = self.session.class_names
        for cid, spin in self._count_spins.items():
            label = self.counts_form.labelForField(spin)
            if label is not None:
                pred = self.session.predicted_counts()[cid - 1]
                label.setText(f"{names[cid - 1]} (predicted {pred:.2f}, found {got.get(cid, 0)})")

    def _watch_edits(self, layer: Any) -> None:
        if id(layer) in self._watched_layers:
            return
        layer.events.paint.connect(self._on_paint)
        self._watched_layers.add(id(layer))

    def _on_paint(self, *_: Any) -> None:
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
        try:
            written = write_instances(path, layer.data, {"features": layer.features,
                                                         "metadata": layer.metadata,
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
        if not present:
            self.stage_label.setText(f"<b>{stage.title}</b><br>{stage.text}<br><i>Run PFN first "
                                     "to see this stage.</i>")
            return
        for name, layer in present.items():
            layer.visible = name == stage.layer
        self.stage_label.setText(f"<b>{stage.title}</b> ({self._stage + 1}/{len(STAGES)})"
                                 f"<br>{stage.text}")
        self.prev_button.setEnabled(self._stage > 0)
        self.next_button.setEnabled(self._stage < len(STAGES) - 1)

    # ================================================================== sync helpers
    def run_sync(self) -> None:
        """Run, blocking until the layers are there (scripts and tests)."""
        was = self.synchronous
        self.synchronous = True
        try:
            self.run()
        finally:
            self.synchronous = was
