"""User-defined symbols of the IP tokenizer (``tokenizer/symbols.yaml``): kept whole as one piece."""

from __future__ import annotations

from pathlib import Path

import yaml

SYMBOLS_FILE = Path(__file__).resolve().parents[2] / "tokenizer" / "symbols.yaml"


def load_symbols(path: str | Path = SYMBOLS_FILE, groups: list[str] | None = None) -> list[str]:
    """All symbols (or those of ``groups``), in file order, without duplicates."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    unknown = set(groups or ()) - set(data)
    if unknown:
        raise KeyError(f"{path}: no symbol groups {sorted(unknown)}; it has {sorted(data)}")
    out: list[str] = []
    for group, items in data.items():
        if groups is None or group in groups:
            out += [s for s in items if s not in out]
    return out
