"""RoPE scaling for stage 2 (issue #10): typed settings, refused when incomplete or contradictory,
resolved into transformers v5 ``rope_parameters``, applied to a stage-1 model loaded with
``model.init_from``, and carried by the export, which reproduces the training logits at the long length."""

from __future__ import annotations

import json
import math

import pytest
import torch

from patentgpt.config import ConfigError, load_config
from patentgpt.model.config import ModelSection
from patentgpt.model.rope import hf_max_position_embeddings, rope_parameters
from patentgpt.train.config import PretrainConfig
from tests.conftest import REPO
from tests.test_train import TINY, make_config

STAGE2 = REPO / "configs" / "pretrain"


def _load(tmp_path, demo_shards, tok, *overrides):
    return make_config(tmp_path, demo_shards, tok, "llama", list(overrides))


@pytest.mark.parametrize("overrides, key, hint", [
    (["model.max_position_embeddings=256", "model.rope_scaling={rope_type: yarn, factor: 4.0}"],
     "model.rope_scaling.original_max_position_embeddings", "required for rope_type 'yarn'"),
    (["model.max_position_embeddings=256", "model.rope_scaling={rope_type: linear}"],
     "model.rope_scaling.original_max_position_embeddings", "required"),
    (["model.max_position_embeddings=256", "model.rope_scaling={rope_type: dynamic, factor: 4}"],
     "model.rope_scaling.original_max_position_embeddings", "required"),
    (["model.max_position_embeddings=256",
      "model.rope_scaling={rope_type: yarn, factor: 2.0, original_max_position_embeddings: 64}"],
     "model.rope_scaling.factor", "set factor: 4"),
    (["model.max_position_embeddings=32", "data.seq_len=64"], "model.max_position_embeddings", "data.seq_len 64"),
    (["model.rope_scaling={rope_type: ntk, factor: 2.0}"], "model.rope_scaling.rope_type", "unknown rope type"),
    (["model.rope_scaling={rope_type: llama3, factor: 2.0}"], "model.rope_scaling.rope_type", "not offered"),
    (["model.rope_scaling={rope_type: default, factor: 2.0}"], "model.rope_scaling.factor", "ABF"),
    (["model.max_position_embeddings=256",
      "model.rope_scaling={rope_type: linear, original_max_position_embeddings: 64, beta_fast: 16}"],
     "model.rope_scaling.beta_fast", "yarn only"),
    (["model.max_position_embeddings=256", "model.rope_scaling={rope_type: yarn, "
      "original_max_position_embeddings: 64, beta_fast: 1, beta_slow: 2}"], "model.rope_scaling.beta_fast", "exceed"),
    (["model.rope_scaling={rope_type: yarn, original_max_position_embeddings: 2048}"],
     "model.rope_scaling.original_max_position_embeddings", "exceeds model.max_position_embeddings"),
    (["model.rope_scaling={rope_type: yarn, factr: 2}"], "model.rope_scaling.factr", "unknown key"),
])
def test_bad_rope_settings_are_refused_naming_the_key(tmp_path, demo_shards, ip_tokenizer_dir, overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, demo_shards, ip_tokenizer_dir, *overrides)
    assert key in str(err.value) and hint in str(err.value), str(err.value)


def test_resolved_rope_parameters():
    yarn = ModelSection(max_position_embeddings=16384, rope_scaling={
        "rope_type": "yarn", "original_max_position_embeddings": 4096, "beta_fast": 16.0})
    assert rope_parameters(yarn) == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                     "original_max_position_embeddings": 4096, "beta_fast": 16.0}
    linear = ModelSection(max_position_embeddings=16000, rope_scaling={
        "rope_type": "linear", "factor": 3.9, "original_max_position_embeddings": 4096})  # within 1% of 3.906
    assert rope_parameters(linear) == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 3.9}
    abf = ModelSection(max_position_embeddings=16384, rope_theta=5e5)
    assert rope_parameters(abf) == {"rope_type": "default", "rope_theta": 5e5}
    dynamic = ModelSection(max_position_embeddings=16384, rope_scaling={
        "rope_type": "dynamic", "original_max_position_embeddings": 4096})
    # transformers' dynamic NTK reads max_position_embeddings as the length it starts scaling beyond
    assert hf_max_position_embeddings(dynamic) == 4096 and hf_max_position_embeddings(yarn) == 16384


def test_stage2_configs_use_the_rope_keys(tmp_path, demo_shards, ip_tokenizer_dir):
    from patentgpt.config.base import apply_overrides, load_yaml_tree, validate

    for name, expect in (("stage2_dense_16k.yaml", "yarn"), ("stage2_moe_16k.yaml", "default")):
        tree = apply_overrides(load_yaml_tree(STAGE2 / name), [f"data.tokenizer={ip_tokenizer_dir}"])
        cfg = validate(PretrainConfig, tree, name)
        assert cfg.data.seq_len == 16384 <= cfg.model.max_position_embeddings
        assert cfg.model.rope_scaling.rope_type == expect and cfg.data.document_masking
        assert {"rope_theta", "rope_scaling"} <= cfg.model.model_fields_set  # applied on init_from


def _tiny_stage1(tmp_path, tok_dir, max_pos: int):
    """A stage-1 model directory (tiny LLaMA trained at ``max_pos``, default RoPE) with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.model.build import hf_config

    m = load_config(ModelSection, None, [o.removeprefix("model.") for o in TINY["llama"]]
                    + [f"max_position_embeddings={max_pos}"])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(m, 2048, tok))
    out = tmp_path / "stage1"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_stage2_yarn_from_stage1_export_reproduces_logits_at_long_length(tmp_path, demo_shards, ip_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    from patentgpt.train.stages import run_stage

    stage1 = _tiny_stage1(tmp_path, ip_tokenizer_dir, 64)
    cfg = _load(tmp_path, demo_shards, ip_tokenizer_dir, f"model.init_from={stage1}", "data.seq_len=256",
                "model.max_position_embeddings=256",
                "model.rope_scaling={rope_type: yarn, original_max_position_embeddings: 64, beta_fast: 16.0}",
                "train.max_steps=3", "optim.warmup_steps=1", "train.micro_batch_size=2", "train.global_batch_size=2",
                "checkpoint.every_steps=3", "run.name=yarn", "deepspeed.zero_stage=0",
                "data.document_masking=true", "eval.holdout=0.1", "eval.max_batches=1")
    summary = run_stage("pretrain", cfg)
    assert all(map(math.isfinite, (loss for _, loss in summary["losses"])))
    export = tmp_path / "yarn" / "export"
    saved = json.loads((export / "config.json").read_text())
    assert saved["max_position_embeddings"] == 256
    assert saved["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                        "original_max_position_embeddings": 64, "beta_fast": 16.0}
    # the trainer compared the training model with from_pretrained(export) on a 256-token row
    # (with its document-masking position_ids)
    assert summary["export_max_logit_diff"] < 1e-5
    model = AutoModelForCausalLM.from_pretrained(export)
    rotary = model.model.rotary_emb
    assert rotary.rope_type == "yarn" and rotary.attention_scaling == pytest.approx(0.1 * torch.log(
        torch.tensor(4.0)).item() + 1)
    # and the scaling matters: the same weights under stage 1's RoPE give other logits at 256
    ids = torch.randint(0, 2000, (1, 256), generator=torch.Generator().manual_seed(1))
    plain = AutoModelForCausalLM.from_pretrained(export, rope_parameters={"rope_type": "default",
                                                                          "rope_theta": 10000.0})
    with torch.no_grad():
        assert (model(ids).logits - plain(ids).logits).abs().max() > 1e-3
