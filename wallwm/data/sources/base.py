"""The source plugin interface and the `name:key=value,key=value` spec syntax.

A source lists its work units (`unit_ids`, cheap) and loads one unit into an Episode (`load`,
the expensive part, run in parallel on Ray). `fingerprint` hashes everything the output depends
on, so an unchanged input reuses the previous build. Bad input raises :class:`SourceError`
naming the file and field; the build quarantines that unit and carries on.

Third-party sources register through the `wallwm.sources` entry-point group or
:func:`register_source`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar

from wallwm.config.schema import DataParams
from wallwm.data.episode import Episode


class SourceError(ValueError):
    """Bad input in one work unit: the message names the file, the field and the value."""

    def __init__(self, message: str, *, path: str = "", field: str = "", value: object = None,
                 check: str = "source"):
        super().__init__(message)
        self.path, self.field, self.value, self.check = path, field, value, check


@dataclass(frozen=True)
class SourceSpec:
    name: str
    options: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}:{opts}" if opts else self.name


def parse_source_spec(text: str) -> SourceSpec:
    """`"sim:episodes=20,tasks=pick-place-v3"` -> SourceSpec("sim", {...})."""
    name, _, rest = text.strip().partition(":")
    if not name.isidentifier():
        raise ValueError(f"source spec {text!r}: expected NAME[:key=value,...], e.g. sim:episodes=20")
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = part.partition("=")
        if not eq or not k:
            raise ValueError(f"source spec {text!r}: option {part!r} is not key=value")
        opts[k.strip()] = v.strip()
    return SourceSpec(name, opts)


class Source(ABC):
    """A data source plugin. Subclasses set `name` and the tiers they can produce."""

    name: ClassVar[str]
    tiers: ClassVar[tuple[str, ...]]
    options: ClassVar[dict[str, str]] = {}  # option -> help, for error messages and --help

    def __init__(self, spec: SourceSpec, params: DataParams):
        unknown = set(spec.options) - set(self.options)
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"source {spec}: unknown option(s) {sorted(unknown)}; allowed: {allowed}")
        self.spec, self.params = spec, params

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 over everything the episodes depend on (input files, options, code version)."""

    @abstractmethod
    def unit_ids(self) -> list[str]:
        """The work units, in a stable order (one unit gives at most one episode)."""

    @abstractmethod
    def load(self, unit_id: str) -> Episode:
        """Produce one episode; raise SourceError for bad input."""

    def unit_identity(self, unit_id: str) -> dict[str, str]:
        """``source_id`` and ``tier`` the unit's episode gets, known without loading it, so a unit
        that fails to load is quarantined under the same name it would have been built under.
        The default suits sources whose source_id is the unit id; override otherwise."""
        return {"source_id": unit_id, "tier": str(getattr(self, "tier", self.tiers[0]))}


_REGISTRY: dict[str, str | type[Source]] = {
    "sim": "wallwm.data.sources.sim:SimSource",
    "lerobot": "wallwm.data.sources.lerobot_import:LeRobotSource",
    "video_folder": "wallwm.data.sources.video_folder:VideoFolderSource",
    "fleet_inbox": "wallwm.data.sources.fleet_inbox:FleetInboxSource",
}


def register_source(name: str, cls: str | type[Source]) -> None:
    _REGISTRY[name] = cls


def available_sources() -> list[str]:
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group="wallwm.sources"))
    return sorted(names)


def _resolve(name: str) -> type[Source]:
    target = _REGISTRY.get(name)
    if target is None:
        for ep in entry_points(group="wallwm.sources"):
            if ep.name == name:
                return ep.load()
        raise ValueError(f"unknown source {name!r}; available: {', '.join(available_sources())}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target


def make_source(spec: SourceSpec | str, params: DataParams) -> Source:
    spec = parse_source_spec(spec) if isinstance(spec, str) else spec
    return _resolve(spec.name)(spec, params)
