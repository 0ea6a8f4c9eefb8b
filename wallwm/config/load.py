"""Load `params.yaml`, merge a second file and `--set key.path=value` overrides, validate.

Order of precedence (later wins): params.yaml < extra files (in the order given) < --set.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from wallwm.config.errors import ConfigError, format_validation_error
from wallwm.config.schema import Params

PARAMS_ENV = "WALLWM_PARAMS"


def find_params_file(start: Path | None = None) -> Path:
    """`$WALLWM_PARAMS`, else the nearest `params.yaml` from `start` (default: cwd) upwards."""
    if env := os.environ.get(PARAMS_ENV):
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{PARAMS_ENV}={env}: no such file")
        return path
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return d / "params.yaml"
    raise ConfigError(
        f"no params.yaml in {here} or its parents; run from the project or set {PARAMS_ENV}"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`; mappings merge key by key, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(item: str) -> tuple[list[str], Any]:
    """`"train.max_steps=50"` -> (["train", "max_steps"], 50); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set train.max_steps=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from e
    return key.split("."), value


def apply_overrides(tree: Mapping[str, Any], sets: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(tree))
    for item in sets:
        path, value = parse_set(item)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {item!r}: {where} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_params(
    path: Path | str | None = None,
    extra_files: Iterable[Path | str] = (),
    sets: Iterable[str] = (),
) -> Params:
    """Read, merge, override and validate. Raises :class:`ConfigError` with a readable message."""
    main = Path(path) if path else find_params_file()
    tree = _read_yaml(main)
    sources = [str(main)]
    for extra in extra_files:
        tree = deep_merge(tree, _read_yaml(Path(extra)))
        sources.append(str(extra))
    sets = list(sets)
    if sets:
        tree = apply_overrides(tree, sets)
        sources.append("--set " + " ".join(sets))
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, " + ".join(sources))) from None


def params_hash(params: Params) -> str:
    """A stable sha256 of the resolved parameters (for manifests and caches)."""
    import hashlib
    import json

    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
