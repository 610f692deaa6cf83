"""The shipped weights as package data: ``pfn_napari.weights``.

pyproject.toml maps this package onto the repository's top-level ``weights/`` folder
(``[tool.setuptools.package-dir]``), so wheels and ``pip install .`` carry
``pfn-lite0-voc.pt`` inside ``pfn_napari/weights/`` and an editable install finds it here.
:func:`pfn_napari.inference.default_weights_path` looks it up through
:mod:`importlib.resources`.
"""
