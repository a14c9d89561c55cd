"""`deepspeed --num_gpus 2` on CPU (gloo), ZeRO-2: same losses as one process with the same global batch."""

import json
import subprocess
import sys

import pytest
import yaml

from patentgpt.train.dist import env_without_rendezvous
from tests.conftest import REPO
from tests.test_train import make_config, metrics

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # absolute, on the step loss; observed: identical to the last printed digit


def launch_output(cmd, cfg_path, name, tmp_path, extra=()) -> str:
    """Run ``cmd launch/pretrain.py`` on ``cfg_path`` as run ``name``; its stdout."""
    env = {**env_without_rendezvous(), "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*cmd, str(REPO / "launch" / "pretrain.py"), "--config", str(cfg_path),
                           "--set", f"run.name={name}", *extra], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _launch(cmd, cfg_path, name, tmp_path, extra=()):
    launch_output(cmd, cfg_path, name, tmp_path, extra)
    return [r["loss"] for r in metrics(tmp_path / name)]


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_two_cpu_ranks_match_one_process(tmp_path, demo_shards, ip_tokenizer_dir, arch):
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, arch,
                      ["train.max_steps=6", "optim.warmup_steps=2", "deepspeed.zero_stage=2", "checkpoint.export_at_end=false",
                       "checkpoint.every_steps=100"])
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    # the `deepspeed` launcher, run from this interpreter (no reliance on PATH)
    two = _launch([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"], cfg_path, "two", tmp_path)
    one = _launch([sys.executable], cfg_path, "one", tmp_path)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a - b) <= TOLERANCE, (one, two)
    assert one[-1] < one[0]
