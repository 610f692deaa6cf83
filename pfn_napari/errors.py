"""Errors a user can act on. The CLI prints them as one line (``pfn: error: ...``), the napari
widget shows them in a message box; neither shows a traceback for them."""


class PFNError(Exception):
    """Base class: the message names the file or value and what to do about it."""


class DatasetError(PFNError):
    """A dataset, image or annotation file is missing, unreadable or inconsistent."""


class CheckpointError(PFNError):
    """A weights or checkpoint file is missing, truncated, or of another version/config."""


class OutputError(PFNError):
    """An output folder or file cannot be written (a file in the way, read-only, disk full)."""
