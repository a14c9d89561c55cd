"""bench/harness.py: the one measuring discipline every benchmark script uses."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from harness import compare, emit  # noqa: E402


def _variant(log, name, work, seconds):
    def run():
        log.append(name)
        return work, seconds
    return run


def test_compare_interleaves_drops_warmup_and_reports_ratio(tmp_path, capsys):
    log = []
    res = compare({"a": _variant(log, "a", 100, 1.0), "b": _variant(log, "b", 100, 2.0)},
                  baseline="b", repeats=3, warmup=1, unit="tokens", progress=False)
    # rounds alternate their order so drift lands on both sides
    assert log == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert res["tokens_per_s"] == {"a": 100.0, "b": 50.0}
    assert res["ratio_vs_baseline"]["a"]["median"] == 2.0
    assert res["ratio_vs_baseline"]["a"]["n"] == 3
    doc = emit(res, extra={"note": "x"}, out=tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().startswith("{")
    assert doc["machine"]["cpu_count"] >= 1 and "command" in doc


def test_compare_rejects_unknown_baseline():
    with pytest.raises(ValueError, match="baseline"):
        compare({"a": lambda: (1, 1.0)}, baseline="z")
