"""The comparison table and PNG a sweep writes: held-out loss against tokens and training wall time."""

import json

import pytest

from patentgpt.ablate_report import run_curves, write_comparison


def _records(rate: float, val: list[float], imbalance=None):
    rows = [{"step": 0, "val/loss": val[0]}]
    for step in range(5, 21, 5):  # logged every 5 steps, 1,000 tokens per step
        row = {"step": step, "loss": 5.0 - step / 10, "tokens_seen": step * 1000, "tokens_per_sec": rate}
        if imbalance:
            row["expert_imbalance_max"] = imbalance
        rows.append(row)
        if step % 10 == 0:
            rows.append({"step": step, "val/loss": val[step // 10]})
    return rows


def test_wall_time_accumulates_logged_intervals():
    r = run_curves(_records(rate=500.0, val=[6.0, 5.0, 4.5]))
    assert [p["step"] for p in r["points"]] == [0, 10, 20]
    assert [p["wall_s"] for p in r["points"]] == pytest.approx([0.0, 20.0, 40.0])  # 10,000 tokens / 500 tok/s
    assert [p["tokens"] for p in r["points"]] == [0, 10000, 20000]
    assert r["final_val_loss"] == 4.5 and r["best_val_loss"] == 4.5 and r["tokens_per_sec"] == pytest.approx(500)


def test_comparison_table_and_png(tmp_path):
    runs = {}
    for name, rate, val, imb in (("dense", 1000.0, [6.0, 5.0, 4.6], None), ("moe", 400.0, [6.0, 4.8, 4.4], 1.3)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(rate, val, imb)))
        runs[name] = d
    runs["missing"] = tmp_path / "missing"  # a run that never started is left out, not an error
    results = write_comparison(tmp_path, runs)
    assert set(results) == {"dense", "moe"}
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[2].startswith("| dense | 4.6000 |") and table[2].endswith("| - |")
    assert table[3].startswith("| moe | 4.4000 |") and "| 1.30 |" in table[3]
    assert (tmp_path / "comparison.png").stat().st_size > 1000
