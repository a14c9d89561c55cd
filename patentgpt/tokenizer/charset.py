"""Required character sets: characters a merged tokenizer must hold as single pieces.

A tokenizer trained on little Chinese text (the shared corpus is mostly titles) leaves common
characters out, and every one of them costs three byte-fallback tokens wherever it appears. A
merge given a required set appends every character of it that the vocabulary lacks, ahead of the
added model's lowest-priority pieces (see :func:`patentgpt.tokenizer.merge.merge_protos`).

Named sets are enumerated from Python's ``gb2312`` and ``big5`` codecs (no data file needed):

* ``gb2312-1``: the 3,755 level-1 (most frequent) simplified hanzi, rows 16-55;
* ``gb2312-2``: the 3,008 level-2 hanzi, rows 56-87 (chemistry and technical characters
  such as 锂, 酯, 钛 are here: patents need them);
* ``gb2312-symbols``: the 682 symbols of rows 1-9 (full-width punctuation, digits, letters, kana ...);
* ``gb2312``: all three;
* ``big5-1``: Big5's 5,401 frequently used (traditional) hanzi, 0xA440-0xC67E.

Anything else is read as a UTF-8 text file whose non-whitespace characters form the set.
"""

from __future__ import annotations

from pathlib import Path

from patentgpt.config import ConfigError

_GB2312_ROWS = {"gb2312-symbols": (0xA1, 0xA9), "gb2312-1": (0xB0, 0xD7), "gb2312-2": (0xD8, 0xF7)}
_GB2312_TRAIL = range(0xA1, 0xFF)
_BIG5_TRAIL = [*range(0x40, 0x7F), *range(0xA1, 0xFF)]


def _double_byte(codec: str, leads: range, trails, last: bytes = b"\xff\xff") -> list[str]:
    """Every assigned two-byte code of ``codec`` with a lead byte in ``leads``, up to ``last``."""
    chars = []
    for lead in leads:
        for trail in trails:
            code = bytes((lead, trail))
            if code > last:
                break
            try:
                chars.append(code.decode(codec))
            except UnicodeDecodeError:  # unassigned cell
                continue
    return chars


def _gb2312_rows(first: int, last: int) -> list[str]:
    return _double_byte("gb2312", range(first, last + 1), _GB2312_TRAIL)


def named_sets() -> tuple[str, ...]:
    return (*_GB2312_ROWS, "gb2312", "big5-1")


def required_char_set(spec: str | list[str] | None) -> str:
    """The characters of ``spec`` (a set name, a file, or a list of them), deduplicated, in order."""
    if spec is None:
        return ""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, None] = {}
    for item in specs:
        name = item.strip().lower()
        if name in ("", "none"):
            continue
        if name == "gb2312":
            chars = [c for rows in _GB2312_ROWS.values() for c in _gb2312_rows(*rows)]
        elif name in _GB2312_ROWS:
            chars = _gb2312_rows(*_GB2312_ROWS[name])
        elif name == "big5-1":
            chars = _double_byte("big5", range(0xA4, 0xC7), _BIG5_TRAIL, last=b"\xc6\x7e")
        else:
            path = Path(item)
            if not path.is_file():
                raise ConfigError(f"required_chars: {item!r} is neither a named set ({', '.join(named_sets())}) "
                                  f"nor a file")
            chars = [c for c in path.read_text(encoding="utf-8") if not c.isspace()]
        out.update(dict.fromkeys(chars))
    return "".join(out)


def single_piece_coverage(proto, chars: str, max_missing: int = 50) -> dict:
    """How many of ``chars`` the SentencePiece model ``proto`` encodes as exactly one piece."""
    from patentgpt.tokenizer.merge import _sp

    sp = _sp(proto, add_dummy_prefix=False, remove_extra_whitespaces=False)
    missing = [c for c in chars if len(sp.encode(c)) != 1]
    return {"chars": len(chars), "single_piece": len(chars) - len(missing),
            "coverage": round((len(chars) - len(missing)) / max(1, len(chars)), 6),
            "missing_examples": "".join(missing[:max_missing])}
