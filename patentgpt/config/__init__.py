"""Typed, validated run configuration.

Every run is decided by a YAML file validated against a pydantic schema before any heavy
work starts. A file may name a ``parent`` (relative to itself) whose values it overrides;
``--set a.b=value`` overrides apply last. Unknown keys, wrong types and impossible
combinations raise :class:`ConfigError` with the dotted key named.
"""

from patentgpt.config.base import (
    ConfigError,
    Section,
    apply_overrides,
    dump_redacted,
    load_config,
    load_yaml_tree,
    redact,
    save_config,
)

__all__ = [
    "ConfigError",
    "Section",
    "apply_overrides",
    "dump_redacted",
    "load_config",
    "load_yaml_tree",
    "redact",
    "save_config",
]
