"""Ulysses sequence parallelism (issue #10) on CPU: `deepspeed --num_gpus 2` with
deepspeed.sequence_parallel_size 2 (each 64-token row split over two gloo ranks) trains like one
process on whole rows: same losses and gradient norms step by step."""

import json
import subprocess
import sys

import pytest
import yaml

from patentgpt.config import ConfigError
from patentgpt.train.dist import env_without_rendezvous
from tests.conftest import REPO
from tests.test_distributed import _launch
from tests.test_train import make_config, metrics


def test_two_sequence_parallel_ranks_match_one_process(tmp_path, demo_shards, ip_tokenizer_dir):
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama",
                      ["train.max_steps=4", "optim.warmup_steps=1", "deepspeed.zero_stage=0",
                       "checkpoint.export_at_end=false", "checkpoint.every_steps=100", "optim.lr=1e-2"])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    env = {**env_without_rendezvous(), "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                           str(REPO / "launch" / "pretrain.py"), "--config", str(path), "--set", "run.name=sp2",
                           "--set", "deepspeed.sequence_parallel_size=2"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ulysses sequence parallelism: 2 ranks per sequence (32 tokens each), data-parallel 1" in proc.stdout
    two = [r["loss"] for r in metrics(tmp_path / "sp2")]
    one = _launch([sys.executable], path, "one", tmp_path)
    norms = [[r["grad_norm"] for r in metrics(tmp_path / n)] for n in ("one", "sp2")]
    assert len(one) == len(two) == 4
    assert one[-1] < one[0] - 0.1  # it learns (lr 1e-2), so later steps test the update too
    for a, b in zip(one, two):
        assert abs(a - b) < 2e-4, (one, two)
    for a, b in zip(*norms):
        assert abs(a - b) < 1e-3 * a, norms


@pytest.mark.parametrize("overrides, hint", [
    (["model.attn_implementation=eager"], "sdpa or flash_attention_2"),
    (["model.num_heads=2", "model.num_kv_heads=1", "deepspeed.sequence_parallel_size=4"], "num_heads"),
    (["data.seq_len=65"], "data.seq_len 65"),
    (["data.document_masking=true"], "flash_attention_2"),
])
def test_settings_ulysses_cannot_run_are_refused(tmp_path, demo_shards, ip_tokenizer_dir, overrides, hint):
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama",
                    ["deepspeed.sequence_parallel_size=2", *overrides])
    assert "deepspeed.sequence_parallel_size" in str(err.value) and hint in str(err.value), str(err.value)
