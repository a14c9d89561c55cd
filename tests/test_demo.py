"""The quickstart's main job, shortened: `patentgpt demo` runs every stage and reports its artifacts."""

import json
import subprocess
import sys
from pathlib import Path

from patentgpt.train.dist import env_without_rendezvous
from tests.conftest import REPO


def test_demo_runs_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "patentgpt.cli", "demo", "--out", str(out), "--vocab-size", "2000",
                           "--set", "train.max_steps=8", "--set", "optim.warmup_steps=2",
                           "--set", "logging.wandb.mode=disabled", "--align-set", "train.max_steps=4",
                           "--align-set", "optim.warmup_steps=1", "--align-set", "logging.wandb.mode=disabled"],
                          env=env_without_rendezvous(), capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "demo_report.json").read_text())
    records = sum(1 for f in (REPO / "patentgpt/assets/demo_corpus").glob("*.jsonl")
                  for line in f.read_text().splitlines() if line.strip())
    assert report["data"]["records_read"] == records
    assert report["data"]["records_kept"] + sum(report["data"]["removed"].values()) == records
    assert set(report["data"]["stages"]) == {"stage1", "stage2"}
    assert report["export_max_logit_diff"] < 1e-5 and report["loss_last_step"] < report["loss_first_step"]
    model = AutoModelForCausalLM.from_pretrained(report["export"])
    tok = AutoTokenizer.from_pretrained(report["export"])
    assert model.config.vocab_size >= len(tok)
    assert all(s.startswith("<s> <|title|>") and len(s) > 20 for s in report["samples"])
    evals = report["eval"]["pretrained"]  # every task with data ran on the export, with a contamination report
    assert {"ipquiz_en/acc", "patent_agent_exam_zh/exam_score", "patentmatch_zh/acc", "ipqa_en/rouge_l",
            "ipquiz_en/contaminated_share", "ipquiz_en/clean_acc"} <= set(evals["metrics"])
    # SFT and the reward model ran on the core from the pretraining export, with held-out evaluation
    sft, rm = report["sft"], report["reward_model"]
    assert sft["data"]["ip_instructions"]["kept"] > 0 and sft["val_loss"]["steps"] == [0, 4]
    assert sft["export_max_logit_diff"] < 1e-5 and isinstance(sft["answer"], str)
    assert rm["pairs"]["pairs"] > 0 and rm["val_accuracy"]["steps"] == [0, 4] and rm["export_max_logit_diff"] < 1e-5
    assert "sft" in report["eval"]
    assert "== evidence" in proc.stdout and "reward model accuracy" in proc.stdout
    assert set(report["embeddings"]["models"]) == {"all-MiniLM-L6-v2", "demo-decoder"}
    for path in (report["metrics"], report["loss_curve"], report["config"], report["data"]["mixture"],
                 report["data"]["sft_examples"], report["data"]["report"], evals["results"], evals["png"]):
        assert Path(path).is_file(), path
