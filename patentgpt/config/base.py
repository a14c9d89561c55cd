"""YAML loading with inheritance and dotted overrides, validation with clear errors."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from patentgpt.errors import ConfigError  # re-exported as patentgpt.config.ConfigError

PARENT_KEY = "parent"
# Keys whose values are secrets, anywhere in a config tree (free-form dicts such as deepspeed.extra
# included): token, hub_token, github_token, hf_token, ... (not pad_token or experts_per_token),
# api keys, passwords, private keys, Authorization headers, credentials, cookies.
_SECRET_KEY = re.compile(
    r"api[_-]?key|secret|passw(or)?d|passphrase|private[_-]?key|authori[sz]ation|credential|cookie|"
    r"(^|[_-])auth$|^token$|(^|[_-])(access|auth|api|hf|hub|wandb|bearer|github|gh|gitlab|slack|oauth|"
    r"refresh|id|session|personal|bot|service|deploy|upload|pypi|npm|write|read)[_-]?token$", re.I)
# Values that are secrets whatever their key: bearer/basic credentials, well-known token formats.
_SECRET_VALUE = re.compile(r"^(bearer|basic|token)\s+\S{8,}$|^(hf_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[bap]-|sk-)"
                           r"[A-Za-z0-9_\-]{16,}$|-----BEGIN [A-Z ]*PRIVATE KEY-----", re.I)
REDACTED = "***"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


T = TypeVar("T", bound=BaseModel)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: let the normal constructor report it
            continue
        if first != key_node.start_mark.line + 1:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key "
                              f"{key!r} (first given on line {first}); a key may appear once per section")
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file and, recursively, the ``parent`` files it names (child wins)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{PARENT_KEY}: circular inheritance: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    try:
        data = yaml.load(text.removeprefix("\ufeff"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parent = data.pop(PARENT_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{PARENT_KEY}: must be a path string, got {parent!r} in {path}")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{PARENT_KEY}: parent config {parent!r} of {path} not found at {parent_path}")
    return _deep_merge(load_yaml_tree(parent_path, (*_seen, path)), data)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict."""
    out = copy.deepcopy(data)
    for item in overrides or ():
        parts, value = _parse_override(item)
        node = out
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        given = err.get("input")
        detail = f" (got {given!r})" if err["type"] != "extra_forbidden" and not isinstance(given, dict) else ""
        lines.append(f"  {loc}: {msg}{detail}")
    return "\n".join(lines)


def validate(cls: type[T], data: dict, source: str = "config") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                data: dict | None = None) -> T:
    """Load ``path`` (with parents) or ``data``, apply overrides, validate against ``cls``."""
    tree = load_yaml_tree(path) if path is not None else copy.deepcopy(data or {})
    tree = apply_overrides(tree, overrides)
    return validate(cls, tree, source=str(path) if path is not None else "inline")


def is_secret_key(key: Any) -> bool:
    return bool(_SECRET_KEY.search(str(key)))


def redact(obj: Any) -> Any:
    """Copy of a plain config tree with secret values (by key, or by their look) replaced."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", [], {}) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.search(obj.strip()):
        return REDACTED
    return obj


def dump_redacted(cfg: BaseModel) -> str:
    """The resolved config as indented JSON with secrets redacted: what ``--check`` prints."""
    return json.dumps(redact(json.loads(cfg.model_dump_json())), indent=2, ensure_ascii=False)


def save_config(cfg: BaseModel, path: str | os.PathLike) -> dict:
    """Write the resolved config (secrets redacted) as YAML and return the plain dict."""
    from patentgpt.io import atomic_write_text

    plain = redact(json.loads(cfg.model_dump_json()))
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
    return plain
