"""Data sources: plugins that turn some input (a simulator, a LeRobot folder, a video folder)
into :class:`~wallwm.data.episode.Episode` objects, one work unit at a time."""

from wallwm.data.sources.base import (
    Source,
    SourceError,
    SourceSpec,
    available_sources,
    make_source,
    parse_source_spec,
    register_source,
)

__all__ = [
    "Source",
    "SourceError",
    "SourceSpec",
    "available_sources",
    "make_source",
    "parse_source_spec",
    "register_source",
]
