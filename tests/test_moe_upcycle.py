"""Dense -> MoE upcycling: exact logits without noise, Auto-loadable, pretraining continues from it."""

import json

import pytest
import torch

from patentgpt.config import ConfigError


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, ip_tokenizer_dir):
    """A small random LLaMA with the demo tokenizer, saved as a transformers directory."""
    from transformers import AutoTokenizer

    from patentgpt.model.build import build_model, round_up
    from patentgpt.model.config import ModelSection

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelSection(arch="llama", hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2)
    model = build_model(cfg, round_up(len(tok)), tokenizer=tok)
    out = tmp_path_factory.mktemp("dense")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_upcycled_logits_equal_dense_and_load_with_auto(tmp_path, dense_dir, ip_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.cli import main

    out = tmp_path / "moe"
    assert main(["model", "upcycle", "--model", str(dense_dir), "--experts", "4", "--top-k", "2",
                 "--out", str(out)]) == 0
    dense = AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    moe = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(moe).__name__ == "MixtralForCausalLM" and moe.config.num_local_experts == 4
    tok = AutoTokenizer.from_pretrained(out)
    rows = [tok(t).input_ids for t in ("一种电池管理系统 A battery management system for an electric vehicle",
                                       "权利要求1所述的方法 The method of claim 1, wherein the cell voltage")]
    n = min(map(len, rows))
    ids = torch.tensor([r[:n] for r in rows])
    with torch.no_grad():
        a = dense(ids).logits
        b = moe(ids).logits
        routed = moe(ids, output_router_logits=True).router_logits
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # the router is random and small: tokens spread over experts rather than all tying on the first k
    picked = torch.topk(routed[0], 2, dim=-1).indices.unique()
    assert len(picked) == 4
    # experts are the dense FFN: expert 3 of layer 1 == [gate; up] and down of the dense layer 1
    d = dense.model.layers[1].mlp
    e = moe.model.layers[1].mlp.experts
    torch.testing.assert_close(e.gate_up_proj[3], torch.cat([d.gate_proj.weight, d.up_proj.weight]))
    torch.testing.assert_close(e.down_proj[3], d.down_proj.weight)


def test_noise_and_reinit_break_symmetry(tmp_path, dense_dir):
    from transformers import AutoModelForCausalLM

    from patentgpt.model.upcycle import max_logit_diff, upcycle_model

    dense = AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    moe = upcycle_model(dense, 4, 2, reinit_fraction=0.5, noise=0.01, seed=1)
    gu = moe.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(gu[0], gu[1])
    dense_gu = torch.cat([dense.model.layers[0].mlp.gate_proj.weight, dense.model.layers[0].mlp.up_proj.weight])
    kept = (gu[0] - dense_gu).abs().amax(-1) < 0.01 * 3 * dense_gu.std()  # noise only: rows not re-initialised
    assert 0.4 < kept.float().mean() < 0.6
    assert max_logit_diff(dense, moe, dense.config.vocab_size) > 1e-3


def test_upcycle_refuses_non_llama_and_bad_top_k(tmp_path, dense_dir):
    from patentgpt.model.upcycle import upcycle

    with pytest.raises(ConfigError, match="--top-k 5"):
        upcycle(dense_dir, tmp_path / "x", 4, 5)
    with pytest.raises(ConfigError, match="not a transformers model directory"):
        upcycle(tmp_path, tmp_path / "x", 4, 2)
    assert not (tmp_path / "x").exists()


def test_pretraining_continues_from_upcycled_checkpoint(tmp_path, dense_dir, demo_shards, ip_tokenizer_dir):
    from patentgpt.model.upcycle import upcycle
    from patentgpt.train.stages import run_stage
    from tests.test_train import make_config, metrics

    report = upcycle(dense_dir, tmp_path / "moe", 4, 2)
    assert report["max_logit_diff"] < 1e-5 and report["exact_copy"]
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "mixtral", [
        f"model.init_from={tmp_path / 'moe'}", "train.max_steps=6", "checkpoint.every_steps=6", "run.name=up",
        "deepspeed.zero_stage=0", "optim.warmup_steps=1"])
    summary = run_stage("pretrain", cfg)
    rows = metrics(tmp_path / "up")
    assert all(r["aux_loss"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"]
    assert summary["export_max_logit_diff"] < 1e-5
    config = json.loads((tmp_path / "up" / "export" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4


def test_upcycle_from_key_builds_the_upcycled_model_in_memory(dense_dir):
    from transformers import AutoModelForCausalLM

    from patentgpt.model.build import build_model
    from patentgpt.model.config import ModelSection
    from patentgpt.model.upcycle import max_logit_diff

    cfg = ModelSection(arch="mixtral", upcycle_from=str(dense_dir), num_experts=4, experts_per_token=1,
                       experts_implementation="grouped_mm", router_aux_loss_coef=0.02)
    moe = build_model(cfg, vocab_size=0)
    assert moe.config.num_local_experts == 4 and moe.config.num_experts_per_tok == 1
    assert moe.config.output_router_logits and moe.config.router_aux_loss_coef == 0.02
    dense = AutoModelForCausalLM.from_pretrained(dense_dir)
    assert max_logit_diff(dense, moe, dense.config.vocab_size) < 1e-5
    with pytest.raises(ValueError, match="upcycle_from"):
        ModelSection(arch="llama", upcycle_from=str(dense_dir))
