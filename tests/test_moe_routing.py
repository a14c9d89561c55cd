"""Routing controls on transformers' Mixtral router (patentgpt/model/routing.py): z-loss, jitter,
auxiliary-loss-free balancing, dead-expert warnings, per-layer metrics, and a training run with
all of them on the demo corpus."""

import json
import logging

import numpy as np
import pytest
import torch

from patentgpt.model.config import ModelSection, RouterSection
from patentgpt.model.routing import RoutingControl, router_entropy, router_z_loss


def _model(num_experts=4, top_k=2, layers=2, seed=0):
    from patentgpt.model.build import build_model

    torch.manual_seed(seed)
    cfg = ModelSection(arch="mixtral", hidden_size=32, intermediate_size=48, num_layers=layers, num_heads=4,
                       num_kv_heads=2, num_experts=num_experts, experts_per_token=top_k)
    return build_model(cfg, vocab_size=128)


def _skew(model, favoured=0, amount=3.0):
    """Router weights that favour one expert strongly on positive inputs."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight[favoured] += amount


def test_z_loss_is_mean_squared_logsumexp():
    logits = (torch.randn(10, 4), torch.randn(6, 4) * 3)
    expected = np.mean([float((torch.logsumexp(lg, -1) ** 2).mean()) for lg in logits])
    assert float(router_z_loss(logits)) == pytest.approx(expected, rel=1e-6)
    uniform = torch.zeros(5, 4)
    assert router_entropy([uniform])[0] == pytest.approx(np.log(4), rel=1e-6)


def test_jitter_perturbs_router_input_in_training_only():
    model = _model()
    RoutingControl(model, RouterSection(jitter=0.2))
    gate = model.model.layers[0].mlp.gate
    x = torch.randn(20, 32)
    clean = x @ gate.weight.T
    gate.train()
    noisy, _, _ = gate(x)
    assert not torch.allclose(noisy, clean)
    # each input element was scaled by a factor in [0.8, 1.2]: the logits stay within the bound
    bound = (x.abs() * 0.2) @ gate.weight.abs().T
    assert ((noisy - clean).abs() <= bound + 1e-5).all()
    gate.eval()
    torch.testing.assert_close(gate(x)[0], clean)


def test_loss_free_bias_balances_selection_without_touching_gate_weights():
    model = _model(num_experts=4, top_k=1)
    _skew(model, favoured=0, amount=0.2)
    ctl = RoutingControl(model, RouterSection(bias_update_rate=0.02))
    model.train()
    gate = model.model.layers[0].mlp.gate
    torch.manual_seed(1)
    x = torch.randn(256, 32) + 0.3
    imbalance = []
    for _ in range(60):
        for g in ctl.routers:
            g(x)
        counts = ctl.end_step()
        imbalance.append(counts[0].max() / counts[0].mean())
    assert imbalance[0] > 3.5  # nearly every token to the favoured expert at first
    assert np.mean(imbalance[-10:]) < 1.6 and max(imbalance[-10:]) < 2.0, imbalance[-10:]
    assert ctl.bias[0, 0] < 0 < ctl.bias[0, 1:].max()
    # the bias moves the selection only: gate weights are the unbiased probabilities, renormalised
    logits, weights, idx = gate(x)
    probs = torch.softmax(logits.float(), -1)
    assert (idx != probs.argmax(-1, keepdim=True)).any()
    torch.testing.assert_close(weights, torch.ones_like(weights))  # top-1: renormalised to 1
    model_k2 = _model(num_experts=4, top_k=2)
    ctl2 = RoutingControl(model_k2, RouterSection(bias_update_rate=0.5))
    g2 = ctl2.routers[0]
    g2.expert_bias = torch.tensor([0.0, 0.0, 1.0, 1.0])  # forces experts 2 and 3
    model_k2.train()
    logits, weights, idx = g2(x)
    assert (idx.sort(-1).values == torch.tensor([2, 3])).all()
    probs = torch.softmax(logits.float(), -1)[:, 2:]
    torch.testing.assert_close(weights.gather(-1, idx.argsort(-1)), probs / probs.sum(-1, keepdim=True))
    # eval (held-out loss, export check, inference): the plain router, as the exported Mixtral
    model_k2.eval()
    _, _, idx_eval = g2(x)
    torch.testing.assert_close(idx_eval, torch.topk(torch.softmax(logits.float(), -1), 2).indices)
    # checkpoint round trip of the bias and the dead-expert counters
    state = json.loads(json.dumps(ctl.state_dict()))
    fresh = RoutingControl(_model(num_experts=4, top_k=1), RouterSection(bias_update_rate=0.02))
    fresh.load_state_dict(state)
    np.testing.assert_allclose(fresh.bias, ctl.bias)
    assert fresh.steps == 60


def test_dead_expert_warning_after_n_steps(caplog):
    model = _model(num_experts=4, top_k=1)
    _skew(model, favoured=0, amount=5.0)
    ctl = RoutingControl(model, RouterSection(dead_expert_steps=3))
    model.train()
    x = torch.rand(16, 32) + 0.1
    with caplog.at_level(logging.WARNING, logger="patentgpt.routing"):
        for step in range(5):
            for g in ctl.routers:
                g(x)
            ctl.end_step()
            if step == 1:
                assert not caplog.records
    msgs = [r.getMessage() for r in caplog.records]
    # experts 1..3 of both layers starved: one warning each, at step 3, not repeated
    assert len(msgs) == 6, msgs
    assert "expert 1 of layer 0 has received no tokens for 3 steps" in msgs


def test_metrics_per_layer():
    counts = np.array([[10, 10, 10, 10], [40, 0, 0, 0]], dtype=float)
    m = RoutingControl.metrics(counts, [1.2, 0.1])
    assert m["expert_imbalance/layer0"] == 1.0 and m["expert_imbalance/layer1"] == 4.0
    assert m["expert_imbalance_max"] == 4.0
    assert m["expert_load/layer1/e0"] == 1.0 and m["expert_load/layer1/e3"] == 0.0
    assert m["router_entropy/layer1"] == 0.1


def test_router_keys_refused_for_dense_model():
    from patentgpt.config import ConfigError, load_config
    from patentgpt.train.config import PretrainConfig
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match="model.router"):
        load_config(PretrainConfig, REPO / "configs" / "pretrain" / "demo_dense.yaml", ["model.router.jitter=0.1"])
    with pytest.raises(ConfigError, match="jitter"):
        load_config(PretrainConfig, REPO / "configs" / "pretrain" / "demo_moe.yaml", ["model.router.jitter=1.5"])


def test_training_with_every_control_logs_per_layer_metrics_and_exports_plain_mixtral(
        tmp_path, demo_shards, ip_tokenizer_dir):
    from patentgpt.train.stages import run_stage
    from tests.test_train import make_config, metrics

    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "mixtral", [
        "train.max_steps=12", "checkpoint.every_steps=6", "run.name=ctl", "logging.every_steps=4",
        "deepspeed.zero_stage=0", "model.router.z_loss_coef=0.001", "model.router.jitter=0.01",
        "model.router.bias_update_rate=0.001", "model.router_aux_loss_coef=0.0", "model.router.dead_expert_steps=2"])
    summary = run_stage("pretrain", cfg)
    rows = metrics(tmp_path / "ctl")
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:  # the logged loss is what was optimised: LM + aux + z terms
        assert r["z_loss"] > 0 and r["loss"] == pytest.approx(r["lm_loss"] + 0.001 * r["z_loss"], rel=1e-9)
        for layer in range(2):
            shares = [r[f"expert_load/layer{layer}/e{e}"] for e in range(4)]
            assert sum(shares) == pytest.approx(1.0)
            assert r[f"expert_imbalance/layer{layer}"] == pytest.approx(max(shares) * 4)
            assert 0 < r[f"router_entropy/layer{layer}"] <= np.log(4) + 1e-6
    state = json.loads((tmp_path / "ctl" / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    bias = np.asarray(state["routing"]["bias"])
    assert bias.shape == (2, 4) and np.abs(bias).max() > 0  # moved by the observed load, saved
    assert (tmp_path / "ctl" / "expert_load.png").is_file()
    # the export is a plain MixtralForCausalLM; evaluation routes without the training-only bias
    assert summary["export_max_logit_diff"] < 1e-5


def test_expert_parallel_size_validated_and_refused_with_the_reason():
    from patentgpt.config import ConfigError, load_config
    from patentgpt.train.config import PretrainConfig
    from tests.conftest import REPO

    moe = REPO / "configs" / "pretrain" / "demo_moe.yaml"
    assert load_config(PretrainConfig, moe, ["deepspeed.expert_parallel_size=1"]).deepspeed.expert_parallel_size == 1
    # routing controls DeepSpeed's expert-parallel gate cannot apply (tests/test_moe_expert_parallel.py)
    with pytest.raises(ConfigError, match="model.router.bias_update_rate") as err:
        load_config(PretrainConfig, moe, ["deepspeed.expert_parallel_size=2", "deepspeed.zero_stage=2",
                                          "model.router.bias_update_rate=0.01"])
    assert "DeepSpeed's gate" in str(err.value)
    with pytest.raises(ConfigError, match="expert_parallel_size"):
        load_config(PretrainConfig, moe, ["deepspeed.expert_parallel_size=0"])
