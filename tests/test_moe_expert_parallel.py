"""Expert parallelism through DeepSpeed's MoE layer (patentgpt/model/expert_parallel.py).

One process: a Mixtral model whose MoE blocks run DeepSpeed's MoE layer (ep_size 1) equals
transformers' own on demo-corpus tokens: logits, loss with the aux loss, every gradient (1e-5,
fp32), also with routing that leaves experts without a token. Config refusals name their key.
Two CPU ranks (gloo) with expert_parallel_size 2 and ZeRO-2, stopped and resumed, against one
process without expert parallelism: same losses, and the export is a plain transformers Mixtral.
"""

import copy
import json
import re
import sys

import pytest
import torch
import yaml

from patentgpt.config import ConfigError, load_config
from patentgpt.train.config import PretrainConfig
from tests.conftest import CORPUS, REPO
from tests.test_moe_kernels import _uneven

TOLERANCE = 1e-5
MOE = REPO / "configs" / "pretrain" / "demo_moe.yaml"


def _model(seed=0, experts=4):
    from transformers import AutoModelForCausalLM, MixtralConfig

    config = MixtralConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts,
                           num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, experts_implementation="eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.3)  # routing that depends on the token
    return model


def _tokens(rows=2, seq=48):
    """Bytes of real demo-corpus text (a 256-symbol vocabulary)."""
    text = (CORPUS / "patents_en.jsonl").read_bytes()[: rows * seq]
    return torch.tensor(list(text), dtype=torch.long).reshape(rows, seq)


def _expert_parallel_copy(model, ep=1):
    from patentgpt.model.expert_parallel import ExpertParallelBlock, install_expert_parallel
    from patentgpt.train.dist import init_distributed

    init_distributed()
    ep_model = copy.deepcopy(model)
    assert install_expert_parallel(ep_model, ep) == len(model.model.layers)
    for m in ep_model.modules():
        if isinstance(m, ExpertParallelBlock):
            if m.moe.deepspeed_moe.ep_group is None:
                m.moe.set_deepspeed_parallelism()  # what deepspeed.initialize does
    return ep_model


def _grads(model) -> dict[str, torch.Tensor]:
    """Gradients under transformers' names (DeepSpeed's per-expert tensors stacked back)."""
    from patentgpt.model.expert_parallel import EXPERTS_PREFIX

    out, experts = {}, {}
    for name, p in model.named_parameters():
        if EXPERTS_PREFIX in name:
            block, rest = name.split(EXPERTS_PREFIX)
            e, w = rest.split(".")
            experts.setdefault(f"{block}.experts.{w}", {})[int(e)] = p.grad
        else:
            out[name] = p.grad
    for key, by_e in experts.items():
        out[key] = torch.stack([by_e[e] for e in sorted(by_e)])
    return out


def test_deepspeed_moe_block_equals_mixtral():
    """Whole model on demo-corpus bytes: logits, loss (with aux and z-loss), every gradient."""
    model = _model()
    ep_model = _expert_parallel_copy(model)
    x = _tokens()
    outs = []
    for m in (model, ep_model):
        m.train()
        m.zero_grad(set_to_none=True)
        out = m(input_ids=x, labels=x, use_cache=False)
        z = torch.stack([torch.logsumexp(lg, -1).pow(2).mean() for lg in out.router_logits]).mean()
        (out.loss + 1e-3 * z).backward()
        outs.append((out, _grads(m)))
    (ref, ref_g), (got, got_g) = outs
    assert (ref.logits - got.logits).abs().max() <= TOLERANCE
    assert abs(float(ref.aux_loss - got.aux_loss)) <= TOLERANCE and float(ref.aux_loss.detach()) > 0
    assert abs(float(ref.loss - got.loss)) <= TOLERANCE
    assert sorted(ref_g) == sorted(got_g)
    for name, g in ref_g.items():
        assert (g - got_g[name]).abs().max() <= TOLERANCE, name
    assert got_g["model.layers.1.mlp.experts.gate_up_proj"].abs().sum() > 0


def test_block_with_idle_experts():
    """Routing that leaves an expert without a token (positive inputs: the signs of the router's
    rows decide): the DeepSpeed block equals Mixtral's block, outputs and gradients."""
    model = _model()
    block = model.model.layers[0].mlp
    hidden = block.gate.weight.shape[1]
    _uneven(block)
    ep_block = _expert_parallel_copy(model).model.layers[0].mlp
    torch.manual_seed(1)
    x0 = torch.rand(2, 24, hidden)
    idx = block.gate(x0.reshape(-1, hidden))[2]
    counts = torch.bincount(idx.reshape(-1), minlength=4)
    assert counts[3] == 0 and counts[0] == 48 and counts[1] > 0 and counts[2] > 0, counts
    results = []
    for b in (block, ep_block):
        x = x0.clone().requires_grad_(True)
        out = b(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), x.grad, b.gate.weight.grad))
    for ref, got in zip(*results):
        assert (ref - got).abs().max() <= TOLERANCE
    experts = ep_block.moe.deepspeed_moe.experts.deepspeed_experts
    for e in range(4):
        assert (block.experts.gate_up_proj.grad[e] - experts[e].gate_up_proj.grad).abs().max() <= TOLERANCE
        assert (block.experts.down_proj.grad[e] - experts[e].down_proj.grad).abs().max() <= TOLERANCE
    assert float(experts[3].gate_up_proj.grad.abs().sum()) == 0.0


def test_expert_parallel_state_dict_round_trip(tmp_path):
    """The export's reassembly of per-expert files equals transformers' fused layout."""
    from patentgpt.model.expert_parallel import EXPERTS_PREFIX, expert_parallel_state_dict

    model = _model(seed=3)
    ep_model = _expert_parallel_copy(model)
    sd = ep_model.state_dict()
    ds = tmp_path / "ds"
    ds.mkdir()
    torch.save({"module": {k: v for k, v in sd.items() if EXPERTS_PREFIX not in k}}, ds / "mp_rank_00_model_states.pt")
    files = {}  # DeepSpeed's layout: one file per layer and global expert
    for k, v in sd.items():
        if EXPERTS_PREFIX in k:
            layer = int(re.search(r"layers\.(\d+)\.", k)[1])
            e = int(k.split(EXPERTS_PREFIX)[1].split(".")[0])
            files.setdefault(f"layer_{layer}_expert_{e}_mp_rank_00_model_states.pt", {})[k] = v
    for name, part in files.items():
        torch.save(part, ds / name)
    got = expert_parallel_state_dict(ds, lambda f, **kw: torch.load(f, weights_only=True, **kw))
    ref = model.state_dict()
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


BASE = {"model": {"arch": "mixtral", "num_experts": 4, "experts_per_token": 2}, "deepspeed": {"zero_stage": 2}}


@pytest.mark.parametrize("override, key", [
    ({"model": {"arch": "llama", "experts_implementation": "eager", "router": {}}}, "model.arch"),
    ({"model": {"num_experts": 5}}, "model.num_experts"),
    ({"model": {"experts_per_token": 1}}, "model.experts_per_token"),
    ({"deepspeed": {"zero_stage": 3}}, "deepspeed.zero_stage"),
    ({"deepspeed": {"zero_stage": 0}}, "deepspeed.zero_stage"),
    ({"deepspeed": {"sequence_parallel_size": 2}}, "deepspeed.sequence_parallel_size"),
    ({"model": {"router": {"bias_update_rate": 0.01}}}, "model.router.bias_update_rate"),
    ({"model": {"router": {"jitter": 0.1}}}, "model.router.jitter"),
    ({"train": {"activation_checkpointing": True}}, "train.activation_checkpointing"),
    ({"train": {"compile": True}}, "train.compile"),
    ({"model": {"experts_implementation": "batched_mm"}}, "model.experts_implementation"),
])
def test_refusals_name_the_key(override, key):
    from patentgpt.config.base import _deep_merge

    data = _deep_merge(_deep_merge(BASE, {"deepspeed": {"expert_parallel_size": 2}}), override)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(PretrainConfig, MOE, overrides=_flatten(data))
    load_config(PretrainConfig, MOE, overrides=_flatten(_deep_merge(BASE, {"deepspeed": {"expert_parallel_size": 2}})))


def _flatten(d, prefix=""):
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        elif not isinstance(v, dict):
            out.append(f"{prefix}{k}={json.dumps(v) if isinstance(v, bool) else v}")
    return out


@pytest.mark.slow
def test_two_ranks_expert_parallel_match_one_process_resume_and_export(tmp_path, demo_shards, ip_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    from patentgpt.model.expert_parallel import check_resume_layout, saved_layout
    from tests.test_distributed import launch_output
    from tests.test_train import make_config, metrics

    common = ["train.max_steps=6", "optim.warmup_steps=2", "deepspeed.zero_stage=2", "checkpoint.every_steps=100",
              "model.experts_implementation=eager", "model.router.z_loss_coef=0.001"]
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "mixtral", common)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    two = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    ep2 = ["--set", "deepspeed.expert_parallel_size=2"]
    launch_output(two, cfg_path, "ep", tmp_path, extra=[*ep2, "--set", "train.stop_at_step=3"])
    ckpt = tmp_path / "ep" / "checkpoints" / "step_00000003"
    assert saved_layout(ckpt) == (2, 2)
    assert sorted(p.name for p in (ckpt / "ds").glob("layer_0_expert_*")) == [
        f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)]
    out = launch_output(two, cfg_path, "ep", tmp_path, extra=ep2)
    one = launch_output([sys.executable], cfg_path, "one", tmp_path)
    resumed = [r["loss"] for r in metrics(tmp_path / "ep")]
    plain = [r["loss"] for r in metrics(tmp_path / "one")]
    assert len(resumed) == len(plain) == 6
    for a, b in zip(plain, resumed):
        assert abs(a - b) <= TOLERANCE, (plain, resumed)
    assert plain[-1] < plain[0]
    # the export: a plain transformers Mixtral reproducing the expert-parallel training model
    diff = float(re.search(r"max \|output diff\| vs training model: (\S+)", out)[1])
    assert diff <= TOLERANCE
    x = torch.tensor([[1, 5, 9, 200, 17, 33, 64, 2]])
    logits = [AutoModelForCausalLM.from_pretrained(tmp_path / run / "export").eval()(input_ids=x).logits
              for run in ("ep", "one")]
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "ep" / "export").model.layers[0].mlp).__name__ == \
        "MixtralSparseMoeBlock"
    assert (logits[0] - logits[1]).abs().max() <= 1e-4  # the same training up to reduction order (3.6e-7 here)

    # resuming on another expert-parallel layout is refused, naming the key
    class Engine:
        module = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="deepspeed.expert_parallel_size"):
        check_resume_layout(Engine(), ckpt)
