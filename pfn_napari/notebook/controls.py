"""ipywidgets knobs over cached network outputs: change a knob, re-cluster, redraw in place.

:class:`Explorer` is the notebook's counterpart of the plugin's *Grouping* and *Instance counts*
boxes: method, sigma, tau and size threshold for every view it shows, a count box per class
present (single view), and for the oracle comparison a noise slider on the ground-truth
locations. A change re-runs only :meth:`StageView.recluster` (the networks never re-run) and
replaces the JPEG of each panel (an ``ipywidgets.Image``), so the pictures update where they
are. The panel's figure is kept: its image, labels and title are updated in place and the
figure is encoded as JPEG (under 1 ms; matplotlib's PNG took 0.3-0.8 s of the 1.1-1.9 s a
redraw took before).

A count box shows the number of instances the grouping used for its class (``k``: the count
head's number rounded, or with ``grouping.count_source`` combined with the boxes the cells
vote for), not the head's raw number (in brackets). A number typed in a box stays until
*reset*; the other boxes follow the grouping after each change.

Sliders report on release (``continuous_update=False``): one re-clustering per move, as the
plugin's 150 ms debounce does.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import PFNError
from ..session import Reclustering, TuneParams
from ..structures import Sample
from .plots import figure_jpeg, instances_title, label_instances
from .views import StageView, oracle_view, run_pfn

if TYPE_CHECKING:  # pragma: no cover
    from ..inference import PFNModel

#: Knob ranges: sigma on a log scale (as the plugin's 0.005..5 spin box), tau, the size
#: threshold in percent of the class's cells, instance counts, oracle noise (normalised units).
SIGMA_RANGE = (0.005, 5.0)
TAU_RANGE = (0.0, 5.0, 0.05)
SIZE_PERCENT_RANGE = (0.0, 50.0, 0.05)
COUNT_RANGE = (0, 99)
NOISE_RANGE = (0.0, 0.1, 0.0025)


def _require_ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError:  # pragma: no cover - the notebook extra is missing
        raise PFNError("the notebook controls need ipywidgets: pip install -e '.[notebook]'") \
            from None
    return ipywidgets


class _Panel:
    """A figure kept between redraws: the overlay's pixels and labels are replaced in place."""

    def __init__(self, view: StageView, width_in: float) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        h, w = view.image.shape[:2]
        self.fig = Figure(figsize=(width_in, width_in * h / w + 0.3), dpi=80)
        FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_subplot()
        self.fig.subplots_adjust(0.0, 0.0, 1.0, 1.0 - 0.3 / (width_in * h / w + 0.3))
        self.ax.set_axis_off()
        self.artist = self.ax.imshow(view.image)
        self.texts: list = []

    def draw(self, view: StageView, clustering: Reclustering) -> bytes:
        """The panel for ``clustering``, as JPEG bytes (artists updated, no new figure)."""
        from ..visualize import overlay

        self.artist.set_data(overlay(view.image, clustering.instances))
        for text in self.texts:
            text.remove()
        self.texts = label_instances(self.ax, clustering.instances, view.class_names)
        self.ax.set_title(instances_title(view, clustering), fontsize=9)
        return figure_jpeg(self.fig)


class Explorer:
    """Knobs and instance panels over one or more :class:`StageView` s.

    Attributes (the ipywidgets): ``method`` (Dropdown), ``sigma`` (FloatLogSlider), ``tau``
    (FloatSlider), ``size`` (FloatSlider, percent of the class's cells), ``counts``
    (``{class id: BoundedIntText}``, each showing the k the grouping used; ``count_defaults``
    the same numbers, ``typed`` the classes whose number the user set), ``noise``
    (FloatSlider, oracle comparisons only),
    ``reset`` (Button), ``status`` (HTML), ``sigma_note`` (HTML: what sigma does in the method
    chosen), ``panels`` (one JPEG Image per view), ``widget`` (the
    whole, displayed as the cell's value). ``clusterings`` holds the last result of each view,
    ``recluster_seconds`` and ``draw_seconds`` how long the last change took.
    """

    def __init__(self, views: Sequence[StageView], counts: bool = True,
                 oracle_sample: Sample | None = None, noise: float = 0.0, seed: int = 0,
                 width: float = 5.0) -> None:
        """``views``: the first sets the knobs' start values (its grouping config) and the
        count boxes (when ``counts``). ``oracle_sample``: the last view is its ground truth,
        rebuilt with the ``noise`` slider's value (``seed`` for the noise)."""
        from ..grouping import GROUPING_METHODS

        W = _require_ipywidgets()
        if not views:
            raise PFNError("Explorer: give at least one view")
        self.views = list(views)
        self.oracle_sample = oracle_sample
        self.seed = seed
        base = self.views[0].default_params()
        methods = tuple(GROUPING_METHODS) + (() if base.method in GROUPING_METHODS
                                             else (base.method,))
        style = {"description_width": "initial"}
        self.method = W.Dropdown(options=methods, value=base.method, description="method",
                                 style=style)
        lo, hi = SIGMA_RANGE
        self.sigma = W.FloatLogSlider(value=min(max(base.sigma, lo), hi), base=10,
                                      min=math.log10(lo), max=math.log10(hi), step=0.05,
                                      description="sigma", readout_format=".3f",
                                      continuous_update=False, style=style)
        self.tau = W.FloatSlider(value=base.tau, min=TAU_RANGE[0], max=TAU_RANGE[1],
                                 step=TAU_RANGE[2], description="tau", readout_format=".2f",
                                 continuous_update=False, style=style)
        self.size = W.FloatSlider(value=100.0 * base.min_size_frac, min=SIZE_PERCENT_RANGE[0],
                                  max=SIZE_PERCENT_RANGE[1], step=SIZE_PERCENT_RANGE[2],
                                  description="size threshold %", readout_format=".2f",
                                  continuous_update=False, style=style)
        # the ImageNet step's switch, for a view made by a model that has the step
        step = self.views[0].imagenet_config()
        self.imagenet = None
        if step is not None and step.weight > 0:
            self.imagenet = W.Checkbox(value=bool(base.imagenet), indent=False,
                                       description="Name missed objects (ImageNet)")
        self.counts: dict[int, Any] = {}
        self.count_defaults: dict[int, int] = {}
        self.typed: set[int] = set()
        if counts:
            view = self.views[0]
            predicted = view.predicted_counts()
            used = view.recluster(base).cluster_counts  # the grouping's k (cached by the Grouper)
            for c in view.present_classes(base.tau):
                default = used.get(c, max(1, int(round(float(predicted[c - 1])))))
                self.counts[c] = W.BoundedIntText(
                    value=default, min=COUNT_RANGE[0], max=COUNT_RANGE[1],
                    description=f"{view.class_names[c - 1]} (head {predicted[c - 1]:.2f})",
                    style=style, layout=W.Layout(width="210px"))
                self.count_defaults[c] = default
        self.noise = None
        if oracle_sample is not None:
            self.noise = W.FloatSlider(value=noise, min=NOISE_RANGE[0], max=NOISE_RANGE[1],
                                       step=NOISE_RANGE[2], description="oracle noise",
                                       readout_format=".4f", continuous_update=False, style=style)
        self.reset = W.Button(description="reset to the model's values",
                              layout=W.Layout(width="fit-content"))
        self.reset.on_click(lambda _: self.reset_knobs())
        self.status = W.HTML()
        self.sigma_note = W.HTML()  # what sigma does in the method chosen
        self._panels = [_Panel(v, width) for v in self.views]
        self.panels = [W.Image(format="jpeg") for _ in self.views]
        self.clusterings: list[Reclustering] = []
        self.recluster_seconds = 0.0
        self.draw_seconds = 0.0
        self.error: str | None = None
        self._paused = False

        knobs = [self.method, self.sigma, self.tau, self.size]
        rows = [W.HBox([self.method, self.sigma]), self.sigma_note,
                W.HBox([self.tau, self.size])]
        if self.imagenet is not None:
            knobs.append(self.imagenet)
            rows.append(self.imagenet)
        if self.counts:
            rows.append(W.HTML("<b>instances per class</b>: the number the grouping used "
                               "(the count head's own number in brackets); type one to set it"))
            rows.append(W.HBox(list(self.counts.values()), layout=W.Layout(flex_flow="row wrap")))
            for c, box in self.counts.items():
                box.observe(lambda _, c=c: self._on_count(c), names="value")
        if self.noise is not None:
            rows.append(self.noise)
            self.noise.observe(self._on_noise, names="value")
        rows += [self.reset, self.status, W.HBox(self.panels)]
        self.widget = W.VBox(rows)
        for knob in knobs:
            knob.observe(self._on_change, names="value")
        self.update()

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ knobs
    def params(self) -> TuneParams:
        """The knobs as they are now; the counts the user typed are overrides."""
        override = tuple(sorted((c, int(self.counts[c].value)) for c in self.typed))
        return TuneParams(method=self.method.value, sigma=float(self.sigma.value),
                          tau=float(self.tau.value), min_size_frac=float(self.size.value) / 100.0,
                          count_override=override,
                          imagenet=None if self.imagenet is None else bool(self.imagenet.value))

    def class_id(self, name_or_id: int | str) -> int:
        """A class id from its name (``"person"``) or id, checked against the count boxes."""
        names = self.views[0].class_names
        cls = names.index(name_or_id) + 1 if isinstance(name_or_id, str) and name_or_id in names \
            else name_or_id
        if cls not in self.counts:
            have = ", ".join(f"{c} {names[c - 1]}" for c in self.counts) or "none"
            raise PFNError(f"class {name_or_id!r} has no count box (classes present: {have})")
        return int(cls)

    def set_count(self, name_or_id: int | str, number: int) -> list[Reclustering]:
        """Type ``number`` in a class's count box (re-clusters, also when the box already
        shows it: the number then stays as typed); returns the new clusterings."""
        cls = self.class_id(name_or_id)
        if int(self.counts[cls].value) == int(number):
            self.typed.add(cls)
            return self.update()
        self.counts[cls].value = int(number)
        return self.clusterings

    def reset_knobs(self) -> list[Reclustering]:
        """Knobs and counts back to the first view's config and predictions; re-clusters once."""
        p = self.views[0].default_params()
        self._paused = True
        try:
            self.method.value, self.sigma.value, self.tau.value = p.method, p.sigma, p.tau
            self.size.value = 100.0 * p.min_size_frac
            if self.imagenet is not None:
                self.imagenet.value = bool(p.imagenet)
        finally:
            self._paused = False
        self.typed.clear()
        return self.update()  # the count boxes follow the grouping again

    def _on_change(self, _: Any = None) -> None:
        if not self._paused:
            self.update()

    def _on_count(self, cls: int) -> None:
        if not self._paused:
            self.typed.add(cls)
            self.update()

    def _show_counts(self, used: dict[int, int]) -> None:
        """Boxes of the classes the user did not type show the k the grouping used."""
        self._paused = True
        try:
            for c, box in self.counts.items():
                if c not in self.typed and c in used:
                    box.value = self.count_defaults[c] = int(used[c])
        finally:
            self._paused = False

    def _on_noise(self, change: dict) -> None:
        self.set_noise(float(change["new"]))

    def set_noise(self, noise: float) -> list[Reclustering]:
        """Rebuild the ground-truth view with location noise ``noise`` and re-cluster."""
        if self.oracle_sample is None:
            raise PFNError("this explorer has no ground-truth view (use compare_with_oracle)")
        old = self.views[-1]
        self.views[-1] = oracle_view(self.oracle_sample, old.class_names, old.net.encoding,
                                     noise=noise, seed=self.seed, grouping=old.grouping,
                                     title=old.title)
        if self.noise is not None and abs(self.noise.value - noise) > 1e-12:
            self._paused = True
            self.noise.value = noise
            self._paused = False
        return self.update()

    def _explain_knobs(self, method: str) -> None:
        """Enable the sliders the method reads over the first view's grouping settings
        (:func:`pfn_napari.grouping.method_knobs`), each with its one line as the tooltip; the
        line under sigma says what sigma does there, or why it does nothing."""
        from ..grouping import GROUPING_METHODS, method_knobs

        if method not in GROUPING_METHODS:
            self.sigma_note.value = f"<i>{html.escape(method)}: see the method's documentation</i>"
            return
        knobs = method_knobs(method, self.views[0].grouping)
        for name, slider in (("sigma", self.sigma), ("tau", self.tau),
                             ("min_size_frac", self.size)):
            slider.disabled = not knobs[name].matters
            slider.tooltip = knobs[name].why
        self.sigma_note.value = f"<i>{html.escape(knobs['sigma'].why)}</i>"

    # ------------------------------------------------------------------ the work
    def update(self) -> list[Reclustering]:
        """Re-cluster every view with the knobs (networks not re-run) and redraw the panels."""
        params = self.params()
        self._explain_knobs(params.method)
        try:
            t0 = time.perf_counter()
            results = [v.recluster(params) for v in self.views]
            t1 = time.perf_counter()
        except PFNError as exc:  # a knob the grouping refuses: one red line, no traceback
            self.error = str(exc)
            self.status.value = f"<span style='color:#c0392b'>{html.escape(str(exc))}</span>"
            return self.clusterings
        self.error = None
        self.clusterings = results
        if self.counts:
            self._show_counts(results[0].cluster_counts)
        for panel, image, view, result in zip(self._panels, self.panels, self.views, results):
            image.value = panel.draw(view, result)
        self.recluster_seconds = t1 - t0
        self.draw_seconds = time.perf_counter() - t1
        found = ", ".join(f"{v.title or 'view'}: {len(r.instances)}"
                          for v, r in zip(self.views, results))
        self.status.value = (f"re-clustered in {self.recluster_seconds * 1000:.0f} ms "
                             f"(networks not re-run), drawn in {self.draw_seconds * 1000:.0f} ms; "
                             f"instances {found}")
        return results


def explore(view: StageView, width: float = 6.0) -> Explorer:
    """Knobs (method, sigma, tau, size threshold, a count box per class present) and the
    instance panel of one view; the cell's value shows them."""
    return Explorer([view], counts=True, width=width)


def compare_with_oracle(model: "PFNModel | StageView | None", sample: Sample,
                        noise: float = 0.0, seed: int = 0, progress: bool = True,
                        width: float = 4.6) -> Explorer:
    """The model's instances beside those of the ground truth fed to the same grouping.

    Args:
        model: a loaded model (run on ``sample.image`` here), a :class:`StageView` already made
            on ``sample.image``, or None for the shipped weights.
        sample: an annotated image whose classes are the model's (see
            :func:`~pfn_napari.notebook.views.annotated_sample`).
        noise: start value of the noise slider on the ground-truth locations (normalised).
        seed: seed of that noise.

    Returns:
        An :class:`Explorer` with two panels ("model", "ground truth"), the shared knobs and
        the noise slider. The ground truth is grouped with the model's settings except
        ``count_source='head'``: its counts are the true numbers of instances.
    """
    if isinstance(model, StageView):
        view = model
        if view.image.shape != sample.image.shape:
            raise PFNError(f"the model's view is {view.image.shape[:2]} but the sample "
                           f"{sample.image_id} is {sample.image.shape[:2]}: run the model on "
                           "sample.image")
    else:
        view = run_pfn(sample.image, model, title="model", progress=progress)
    if sample.num_instances and int(sample.instance_classes.max()) > len(view.class_names):
        raise PFNError(f"sample {sample.image_id} has class {int(sample.instance_classes.max())}, "
                       f"the model {len(view.class_names)} classes: open the data with the "
                       "model's class names")
    # the truth's counts are exact: its k is the true number (count_source 'head'), not mixed
    # with the votes as the shipped grouping's 'mean' does for the network's counts
    truth = oracle_view(sample, view.class_names, view.net.encoding, noise=noise, seed=seed,
                        grouping=replace(view.grouping, count_source="head"),
                        title="ground truth")
    return Explorer([view, truth], counts=False, oracle_sample=sample, noise=noise, seed=seed,
                    width=width)
