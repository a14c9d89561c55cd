import subprocess
import sys
import time

import pytest
import yaml

from patentgpt.config import ConfigError, load_config, save_config
from patentgpt.train.config import PretrainConfig, resolve_batch
from tests.conftest import REPO

DEMO = REPO / "configs" / "pretrain" / "demo_dense.yaml"


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs" / "pretrain").glob("*.yaml")):
        if path.name == "base.yaml":
            continue
        cfg = load_config(PretrainConfig, path)
        assert cfg.run.name and cfg.data.sources


def test_inheritance_and_overrides():
    moe = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "demo_moe.yaml", ["optim.lr=1e-3"])
    dense = load_config(PretrainConfig, DEMO)
    assert moe.model.arch == "mixtral" and dense.model.arch == "llama"
    assert moe.data.seq_len == dense.data.seq_len  # inherited from demo_dense
    assert moe.optim.lr == pytest.approx(1e-3)  # override wins
    stage2 = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "stage2_dense_16k.yaml")
    assert stage2.data.seq_len == 16384 and stage2.model.max_position_embeddings >= 16384
    assert stage2.deepspeed.zero_stage == 3


@pytest.mark.parametrize("override, key", [
    ("model.hiden_size=64", "model.hiden_size"),
    ("train.micro_batch_size=abc", "train.micro_batch_size"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage"),
    ("model.num_heads=5", "model.num_heads"),
    ("data.seq_len=100000", "data.seq_len"),
    ("model.experts_implementation=grouped_mm", "model.experts_implementation"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, DEMO, [override])
    assert key in str(err.value)


def test_batch_agreement_with_world_size():
    cfg = load_config(PretrainConfig, DEMO, ["train.micro_batch_size=4", "train.global_batch_size=16"])
    assert resolve_batch(cfg, 1) == (4, 4, 16)
    assert resolve_batch(cfg, 2) == (4, 2, 16)
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        resolve_batch(cfg, 3)
    bad = load_config(PretrainConfig, DEMO, ["train.grad_accum_steps=3"])
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        resolve_batch(bad, 1)


def test_saved_config_round_trips_and_redacts(tmp_path):
    cfg = load_config(PretrainConfig, DEMO, ["deepspeed.extra={wandb_api_key: s3cret}"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in text
    again = load_config(PretrainConfig, data=yaml.safe_load(text.replace("'***'", "x")))
    assert again.model == cfg.model and again.data == cfg.data


def test_launcher_rejects_bad_config_fast(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"parent: {DEMO}\ntrain:\n  max_step: 10\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), "--config", str(bad)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "train.max_step" in proc.stderr and "unknown key" in proc.stderr
    assert time.time() - t0 < 15


def test_circular_parent(tmp_path):
    (tmp_path / "a.yaml").write_text("parent: b.yaml\n")
    (tmp_path / "b.yaml").write_text("parent: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(PretrainConfig, tmp_path / "a.yaml")
