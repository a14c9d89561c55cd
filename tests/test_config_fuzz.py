"""Config fuzz (issue #16): every broken pretraining config exits 2 naming the key, quickly, with no
traceback. Each case is `patentgpt pretrain --config FILE [--set ...] --check` on the demo config
with one fault planted; the first ten used to end in a traceback (Hugging Face OSError, DeepSpeed
AssertionError, KeyError, UnicodeDecodeError) or be silently accepted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from patentgpt.cli import main
from patentgpt.config.checks import ROPE_TYPES
from tests.conftest import REPO

DEMO = REPO / "configs" / "pretrain" / "demo_dense.yaml"


def _yaml(tmp: Path, name: str, body: bytes) -> Path:
    path = tmp / name
    path.write_bytes(f"parent: {DEMO}\n".encode() + body)
    return path


def _plant(tmp: Path, fault: str):
    """(config path, overrides) with one fault planted; files the fault needs are made here."""
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "empty_dir").mkdir(exist_ok=True)
    (tmp / "half_model").mkdir(exist_ok=True)
    (tmp / "half_model" / "config.json").write_text("{}")
    cases = {
        # --- used to be tracebacks or silently accepted
        "tokenizer_missing": (DEMO, ["data.tokenizer=nowhere/tokenizer"]),
        "source_missing": (DEMO, ["data.sources=[{name: patents, path: nowhere/shards}]"]),
        "tokenizer_empty": (DEMO, ["data.tokenizer="]),
        "tokenizer_is_file": (DEMO, [f"data.tokenizer={tmp / 'a_file'}"]),
        "tokenizer_not_tokenizer": (DEMO, [f"data.tokenizer={tmp / 'empty_dir'}"]),
        "init_from_missing": (DEMO, ["model.init_from=nowhere/model"]),
        "init_from_empty": (DEMO, ["model.init_from="]),
        "init_from_no_config": (DEMO, [f"model.init_from={tmp / 'empty_dir'}"]),
        "init_from_no_weights": (DEMO, [f"model.init_from={tmp / 'half_model'}"]),
        "yaml_not_utf8": (_yaml(tmp, "latin1.yaml", "run:\n  name: d\xe9mo\n".encode("latin-1")), []),
        "yaml_duplicate_key": (_yaml(tmp, "dup.yaml", b"optim:\n  lr: 1.0e-3\n  lr: 1.0e-4\n"), []),
        "ds_extra_batch": (DEMO, ["deepspeed.extra={train_batch_size: 64}"]),
        "ds_extra_micro": (DEMO, ["deepspeed.extra={train_micro_batch_size_per_gpu: 2}"]),
        "ds_extra_zero": (DEMO, ["deepspeed.extra={zero_optimization: {stage: 3}}"]),
        "rope_unknown": (DEMO, ["model.rope_scaling={rope_type: ntk, factor: 2.0}"]),
        "output_under_file": (DEMO, [f"run.output_dir={tmp / 'a_file' / 'runs'}"]),
        "output_is_file": (DEMO, [f"run.output_dir={tmp / 'a_file'}"]),
        "name_escapes": (DEMO, ["run.name=../../escaped"]),
        "name_absolute": (DEMO, ["run.name=/tmp/x"]),
        # --- already clean before
        "unknown_key": (DEMO, ["model.hiden_size=64"]),
        "wrong_type": (DEMO, ["train.micro_batch_size=abc"]),
        "zero_stage": (DEMO, ["deepspeed.zero_stage=4"]),
        "heads_divide": (DEMO, ["model.num_heads=5"]),
        "seq_len": (DEMO, ["data.seq_len=100000"]),
        "warmup": (DEMO, ["optim.warmup_steps=100000"]),
        "negative_lr": (DEMO, ["optim.lr=-1"]),
        "precision": (DEMO, ["train.precision=fp8"]),
        "arch": (DEMO, ["model.arch=gpt"]),
        "experts": (DEMO, ["model.experts_per_token=9"]),
        "no_sources": (DEMO, ["data.sources=[]"]),
        "dup_sources": (DEMO, ["data.sources=[{name: a, path: x}, {name: a, path: y}]"]),
        "mixture_missing": (DEMO, ["data.mixture=nowhere/mixture.yaml"]),
        "override_syntax": (DEMO, ["optim.lr"]),
        "override_into_value": (DEMO, ["run.name.x=1"]),
        "yaml_syntax": (_yaml(tmp, "syntax.yaml", b"optim: {lr: [\n"), []),
        "yaml_top_list": (tmp / "list.yaml", []),
        "parent_missing": (tmp / "orphan.yaml", []),
        "file_missing": (tmp / "missing.yaml", []),
    }
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "orphan.yaml").write_text("parent: nowhere.yaml\n")
    return cases[fault]


# fault -> what stderr must name
EXPECT = {
    "source_missing": "data.sources[patents].path",
    "tokenizer_missing": "data.tokenizer", "tokenizer_empty": "data.tokenizer", "tokenizer_is_file": "data.tokenizer",
    "tokenizer_not_tokenizer": "data.tokenizer", "init_from_missing": "model.init_from",
    "init_from_empty": "model.init_from", "init_from_no_config": "model.init_from",
    "init_from_no_weights": "model.init_from", "yaml_not_utf8": "latin1.yaml: line 3: not UTF-8",
    "yaml_duplicate_key": "duplicate key 'lr'", "ds_extra_batch": "deepspeed.extra.train_batch_size",
    "ds_extra_micro": "deepspeed.extra.train_micro_batch_size_per_gpu",
    "ds_extra_zero": "deepspeed.extra.zero_optimization.stage", "rope_unknown": "model.rope_scaling.rope_type",
    "output_under_file": "run.output_dir", "output_is_file": "run.output_dir", "name_escapes": "run.name",
    "name_absolute": "run.name", "unknown_key": "model.hiden_size", "wrong_type": "train.micro_batch_size",
    "zero_stage": "deepspeed.zero_stage", "heads_divide": "model.num_heads", "seq_len": "data.seq_len",
    "warmup": "optim.warmup_steps", "negative_lr": "optim.lr", "precision": "train.precision", "arch": "model.arch",
    "experts": "model.experts_per_token", "no_sources": "data.sources", "dup_sources": "data.sources",
    "mixture_missing": "data.mixture", "override_syntax": "optim.lr", "override_into_value": "run.name",
    "yaml_syntax": "invalid YAML", "yaml_top_list": "top level must be a mapping", "parent_missing": "parent",
    "file_missing": "config file not found",
}


@pytest.fixture
def base_args(tmp_path, ip_tokenizer_dir, demo_shards):
    return ["--set", f"data.tokenizer={ip_tokenizer_dir}", "--set", f"run.output_dir={tmp_path / 'runs'}",
            "--set", f"data.sources=[{{name: patents, path: {demo_shards['patents']}}}]"]


def check(config: Path, overrides: list[str], base: list[str], capsys) -> tuple[int, str, str, float]:
    argv = ["pretrain", "--config", str(config), *base]
    for o in overrides:
        argv += ["--set", o]
    t0 = time.perf_counter()
    rc = main([*argv, "--check"])
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return rc, out, err, seconds


def test_valid_config_passes_and_prints_redacted(tmp_path, base_args, capsys):
    rc, out, err, _ = check(DEMO, ["deepspeed.extra={hub_token: hf_AbCdEfGhIjKlMnOpQrStUv, "
                                   "headers: {Authorization: Bearer sEcReT123456}}"], base_args, capsys)
    assert rc == 0, err
    assert "hf_AbCdEfGhIjKlMnOpQrStUv" not in out and "sEcReT123456" not in out and '"hub_token": "***"' in out
    assert '"experts_per_token": 2' in out  # a key ending in "token" that is no secret


@pytest.mark.parametrize("fault", list(EXPECT))
def test_fault_exits_2_naming_the_key(tmp_path, base_args, capsys, fault):
    config, overrides = _plant(tmp_path, fault)
    # a fault in the tokenizer / output settings replaces the valid base value (later --set wins)
    rc, out, err, seconds = check(config, overrides, base_args, capsys)
    assert rc == 2, (out, err)
    assert EXPECT[fault] in err, err
    assert "Traceback" not in err and seconds < 1.0, seconds


@pytest.mark.parametrize("fault", ["tokenizer_not_tokenizer", "yaml_not_utf8", "ds_extra_batch"])
def test_fault_from_a_fresh_process(tmp_path, base_args, fault):
    config, overrides = _plant(tmp_path, fault)
    cmd = [sys.executable, "-m", "patentgpt.cli", "pretrain", "--config", str(config), *base_args]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    proc = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and EXPECT[fault] in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - t0 < 10  # about a second on an idle machine (no torch, no transformers)


def test_rope_types_are_transformers_own():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    assert set(ROPE_TYPES) == {"default", *ROPE_INIT_FUNCTIONS}
