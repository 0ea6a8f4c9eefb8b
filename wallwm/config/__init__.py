"""Typed configuration: `params.yaml` validated by pydantic, with overrides.

Use :func:`load_params` everywhere; it returns a frozen :class:`Params` tree whose errors name the
key path, the bad value and what is allowed.
"""

from wallwm.config.errors import ConfigError
from wallwm.config.load import apply_overrides, find_params_file, load_params, parse_set
from wallwm.config.schema import Params

__all__ = [
    "ConfigError",
    "Params",
    "apply_overrides",
    "find_params_file",
    "load_params",
    "parse_set",
]
