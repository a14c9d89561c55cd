import math

import pytest
import torch

from patentgpt.model.build import build_model
from patentgpt.model.flops import active_matmul_params, flops_per_token
from patentgpt.model.config import ModelSection
from patentgpt.train.config import OptimSection
from patentgpt.train.schedule import lr_at


def _matmul_params(model, experts_scale: float = 1.0) -> int:
    total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name or p.ndim < 2:
            continue
        total += p.numel() * (experts_scale if ".experts." in name else 1.0)
    return int(total)


def test_dense_flops_count_every_matmul_parameter():
    cfg = ModelSection(hidden_size=64, intermediate_size=160, num_layers=3, num_heads=4, num_kv_heads=2)
    model = build_model(cfg, vocab_size=320)
    assert active_matmul_params(model.config) == _matmul_params(model)
    head_dim = 16
    assert flops_per_token(model.config, 128) == 6 * _matmul_params(model) + 12 * 3 * 4 * head_dim * 128


def test_moe_flops_count_only_active_experts():
    cfg = ModelSection(arch="mixtral", hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                       num_kv_heads=1, num_experts=8, experts_per_token=2)
    model = build_model(cfg, vocab_size=256)
    assert active_matmul_params(model.config) == _matmul_params(model, experts_scale=2 / 8)
    total = _matmul_params(model)
    assert active_matmul_params(model.config) < total


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    cfg = OptimSection(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule=schedule, decay_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(lrs[:10], lrs[1:10]))
    if schedule == "constant":
        assert set(lrs[10:]) == {1.0}
    elif schedule == "cosine":
        assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1
    else:
        assert lrs[79] == 1.0 and lrs[-1] == pytest.approx(0.1)
        assert all(b <= a for a, b in zip(lrs[80:], lrs[81:]))
