"""Monitoring faults (issue #16): a torn last line in metrics.jsonl, a W&B server that never answers."""

from __future__ import annotations

import json
import socket
import time
import warnings

import pytest

from patentgpt.train.config import WandbSection
from patentgpt.train.monitor import Monitor, read_metrics

RECORDS = [{"step": s, "loss": round(7.6 - 0.31 * s, 6), "lr": 2e-3 * min(1, s / 3)} for s in range(1, 7)]


def write_log(run_dir, torn: bool = True) -> None:
    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    if torn:  # the power went out while step 7 was being appended
        text += json.dumps({"step": 7, "loss": 5.4})[:11]
    (run_dir / "metrics.jsonl").write_text(text)


def test_torn_last_line_is_skipped_with_a_warning_and_resume_goes_on(tmp_path):
    write_log(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable line.*line 7 \(malformed_json\)"):
        assert read_metrics(tmp_path) == RECORDS
    with pytest.warns(UserWarning, match="torn last line"):
        mon = Monitor(tmp_path, {}, WandbSection(mode="disabled"), run_name="t", resume_step=4)
    mon.log({"step": 5, "loss": 6.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == [*RECORDS[:4], {"step": 5, "loss": 6.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten log is clean: no warning on the next relaunch
        assert len(read_metrics(tmp_path)) == 5


def test_unanswering_wandb_server_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    import patentgpt.train.monitor as monitor

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections, never answers: the stall users saw before step 1
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setattr(monitor, "WANDB_PROBE_TIMEOUT_S", 1.0)
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mon = Monitor(tmp_path, {"model": "tiny"}, WandbSection(mode="online"), run_name="t")
        elapsed = time.time() - t0
        mon.log(RECORDS[0])
        mode = mon.run.settings.mode if mon.run is not None else None
        mon.finish()
    finally:
        server.close()
    msgs = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(msgs) == 1 and "did not answer within 1 s" in msgs[0] and "offline" in msgs[0]
    assert mode == "offline" and list((tmp_path / "wandb").glob("offline-run-*"))
    assert elapsed < 30, elapsed  # was ~105 s
    assert read_metrics(tmp_path) == RECORDS[:1]
