"""The test-time settings a command takes from ``--set``, apart from the loaded model.

``pfn predict`` and ``pfn evaluate CHECKPOINT`` read four sections: ``grouping``, ``crf``,
``imagenet`` and ``show``. An override of any other section is refused (one line naming the sections
the command reads): the model's other settings are fixed by its checkpoint. The result is a
new :class:`~pfn_napari.config.PFNConfig`; the loaded model's config is never changed.
"""

from __future__ import annotations

from ..config import (ConfigError, PFNConfig, apply_overrides, config_from_dict, config_to_dict,
                      migrate_key)

#: The sections a command that runs a loaded model reads at test time.
TEST_TIME_SECTIONS = ("grouping", "crf", "imagenet", "show")


def _listed(sections: tuple[str, ...]) -> str:
    """``('a',)`` -> ``'the a section'``; ``('a', 'b', 'c')`` -> ``'the a, b and c sections'``."""
    if len(sections) == 1:
        return f"the {sections[0]} section"
    return f"the {', '.join(sections[:-1])} and {sections[-1]} sections"


def check_sections(overrides: list[str], sections: tuple[str, ...], command: str) -> None:
    """Raise :class:`ConfigError` for an override of a section ``command`` does not read."""
    for item in overrides:
        key = migrate_key(item.split("=", 1)[0].strip())
        if key.split(".")[0] not in sections:
            raise ConfigError(f"--set {item}: {command} reads only {_listed(sections)}; "
                              "drop this override")


def test_time_config(base: PFNConfig, overrides: list[str], command: str,
                     sections: tuple[str, ...] = TEST_TIME_SECTIONS) -> PFNConfig:
    """``base`` with ``overrides`` applied, as a new validated config (``base`` unchanged);
    an override outside ``sections`` is a :class:`ConfigError`."""
    if not overrides:
        return base
    check_sections(overrides, sections, command)
    values = apply_overrides(config_to_dict(base), overrides)
    cfg = config_from_dict(values)
    cfg.validate()
    return cfg
