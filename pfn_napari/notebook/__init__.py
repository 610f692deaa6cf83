"""PFN in Jupyter: the stages as inline figures, knobs as ipywidgets, and napari in one call.

The notebook ``examples/pfn_tour.ipynb`` reads like a lesson because the work is here. It is the
notebook counterpart of the napari plugin and wires the same pieces: the library's
:class:`~pfn_napari.session.PFNSession` (the plugin's too) runs the networks once, its
predictor re-clusters the cached output, and the layer data functions
(:mod:`pfn_napari.layer_data`) give the data of every picture. See ``docs/notebook.md``.

>>> import pfn_napari.notebook as nb                                    # doctest: +SKIP
>>> view = nb.run_pfn(nb.load_sample("skaters"))                        # doctest: +SKIP
>>> result = view.recluster(sigma=0.1, count_override={15: 3})           # doctest: +SKIP
>>> nb.plot_instances(view, result)                                     # doctest: +SKIP
>>> nb.explore(view)                                                    # doctest: +SKIP
>>> sample, where = nb.annotated_sample(view.class_names)                # doctest: +SKIP
>>> nb.compare_with_oracle(view.session.model, sample)                  # doctest: +SKIP
>>> nb.open_in_napari(view, result)                                     # doctest: +SKIP

``matplotlib`` is a core dependency; the controls need the ``notebook`` extra
(``pip install -e ".[notebook]"``: ipywidgets, jupyterlab, ipykernel, nbclient).
"""

from __future__ import annotations

from ..inference import load_model
from ..samples import SAMPLES, load_sample
from ..session import Reclustering, TuneParams
from .controls import Explorer, compare_with_oracle, explore
from .plots import (TITLES, figure_png, plot_category, plot_clusters, plot_instances,
                    plot_locations, plot_refined, plot_stages, plot_vectors)
from .viewer import add_layers, display_problem, open_in_napari
from .views import StageView, annotated_sample, oracle_view, run_pfn, shared_data_dir

__all__ = [
    "Reclustering",
    "Explorer",
    "SAMPLES",
    "StageView",
    "TITLES",
    "TuneParams",
    "add_layers",
    "annotated_sample",
    "compare_with_oracle",
    "display_problem",
    "explore",
    "figure_png",
    "load_model",
    "load_sample",
    "open_in_napari",
    "oracle_view",
    "plot_category",
    "plot_clusters",
    "plot_instances",
    "plot_locations",
    "plot_refined",
    "plot_stages",
    "plot_vectors",
    "run_pfn",
    "shared_data_dir",
]
