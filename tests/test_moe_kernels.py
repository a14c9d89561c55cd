"""Every experts implementation available here (transformers' ExpertsInterface) against eager:
outputs and gradients of a Mixtral MoE block on the same weights and tokens, fp32, 1e-5."""

import pytest
import torch

from patentgpt.model.kernels import KernelUnavailable, available_experts_implementations, prepare_kernels

IMPLS = [i for i in available_experts_implementations() if i != "eager"]


def _block(num_experts=6, top_k=2, hidden=32, inter=48, seed=0):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=num_experts,
                           num_experts_per_tok=top_k, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    config._experts_implementation = "eager"
    torch.manual_seed(seed)
    block = MixtralSparseMoeBlock(config).float()
    with torch.no_grad():
        block.gate.weight.normal_(0, 0.5)
        block.experts.gate_up_proj.normal_(0, 0.2)
        block.experts.down_proj.normal_(0, 0.2)
    return block, config


def _uneven(block):
    """Router weights that send every token to expert 0 plus expert 1 or 2, and none to 3..E-1
    (inputs are positive, so the signs of the rows decide)."""
    h = block.gate.weight.shape[1]
    with torch.no_grad():
        w = block.gate.weight
        w.fill_(-1.0)
        w[0] = 3.0
        w[1] = 0.0
        w[2] = 0.0
        w[1, : h // 2] = torch.rand(h // 2) * 2
        w[2, h // 2:] = torch.rand(h - h // 2) * 2


def _run(block, config, impl, x):
    config._experts_implementation = impl
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = block(x)
    # a loss that weights every output element differently, so wrong rows or scales show up
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    return out.detach(), x.grad.clone(), grads


def _routed_counts(block, x):
    with torch.no_grad():
        _, _, idx = block.gate(x.reshape(-1, x.shape[-1]))
    return torch.bincount(idx.reshape(-1), minlength=block.gate.num_experts)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("routing", ["random", "uneven"])
def test_experts_implementation_matches_eager(impl, routing):
    block, config = _block()
    torch.manual_seed(1)
    if routing == "uneven":
        _uneven(block)
        x = torch.rand(3, 17, 32) + 0.05
    else:
        x = torch.randn(3, 17, 32)
    counts = _routed_counts(block, x)
    if routing == "uneven":
        assert (counts[3:] == 0).all() and counts[0] == x.shape[0] * x.shape[1], counts
        assert counts[1] > 0 and counts[2] > 0 and counts[1] != counts[2], counts
    else:
        assert (counts > 0).all(), counts
    ref_out, ref_dx, ref_grads = _run(block, config, "eager", x)
    out, dx, grads = _run(block, config, impl, x)
    assert ref_out.abs().max() > 1e-2  # the comparison is not between zeros
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    assert set(grads) == {"gate.weight", "experts.gate_up_proj", "experts.down_proj"}
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    if routing == "uneven":  # experts that received no token get exactly zero gradient
        assert (grads["experts.gate_up_proj"][3:] == 0).all() and (grads["experts.down_proj"][3:] == 0).all()


def test_megablocks_missing_fails_at_start_naming_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "megablocks" else real(name, *a))
    with pytest.raises(KernelUnavailable, match=r"pip install 'megablocks==0.10.0'.*") as err:
        prepare_kernels("sdpa", "megablocks")
    assert "torch>=2.7.0,<2.7.1" in str(err.value)


def test_megablocks_glue_with_a_stand_in_grouped_gemm(monkeypatch):
    """Our megablocks forward (sorting, grouping, gate weights, scatter back) against eager, with
    megablocks' ``gmm`` replaced by a plain per-group matmul: the real kernel needs a GPU."""
    import sys
    import types

    from patentgpt.model.kernels import register_megablocks

    def gmm(a, b, batch_sizes, trans_b=False):
        outs, start = [], 0
        for e, n in enumerate(batch_sizes.tolist()):
            w = b[e].T if trans_b else b[e]
            outs.append(a[start:start + n] @ w)
            start += n
        return torch.cat(outs)

    gg = types.SimpleNamespace(ops=types.SimpleNamespace(gmm=gmm))
    fake = types.ModuleType("megablocks")
    fake.grouped_gemm_util = gg
    monkeypatch.setitem(sys.modules, "megablocks", fake)
    register_megablocks()
    block, config = _block()
    _uneven(block)
    x = torch.rand(2, 9, 32) + 0.05
    ref_out, ref_dx, ref_grads = _run(block, config, "eager", x)
    out, dx, grads = _run(block, config, "megablocks", x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
