"""`patentgpt export` on a ZeRO-3 checkpoint gives the model the run exported at its end."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from patentgpt.train.dist import env_without_rendezvous
from tests.conftest import REPO
from tests.test_train import make_config


def test_export_cli_on_zero3_checkpoint(tmp_path, demo_shards, ip_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.train.stages import run_stage

    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "mixtral",
                      ["train.max_steps=4", "optim.warmup_steps=1", "checkpoint.every_steps=4", "run.name=z3",
                       "deepspeed.zero_stage=3"])
    summary = run_stage("pretrain", cfg)
    assert summary["export_max_logit_diff"] < 1e-5
    ckpt = tmp_path / "z3" / "checkpoints" / "step_00000004"
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "patentgpt.cli", "export", str(ckpt), str(out)],
                          env=env_without_rendezvous(), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "z3" / "export" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size >= len(tok) and model.config.model_type == "mixtral"

    bad = subprocess.run([sys.executable, "-m", "patentgpt.cli", "export", str(tmp_path / "nope"), str(out)],
                         env=env_without_rendezvous(), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "not a complete PatentGPT checkpoint" in bad.stderr
