"""MoE throughput: experts implementations (transformers' ExpertsInterface) vs eager, and MoE vs dense.

1. One Mixtral MoE layer, forward + backward, per available implementation against ``eager``
   (tokens/s; ``batched_mm`` gathers a weight copy per token, ~11 GB at this shape, so it is left out).
2. Whole-model training steps in our DeepSpeed engine (the core's ``make_engine``) with each
   implementation, and the dense LLaMA with the same active parameters (FFN intermediate = top-k x
   the expert's), all interleaved; tokens/s and ratios.
3. The experts' share of an eager step, measured inside the same interleaved rounds: a variant
   whose experts cost nothing (``bench_free``: the router's gates times the input, registered in
   ``ExpertsInterface`` for this benchmark only) gives share = 1 - t_free / t_eager per round, and
   the whole-step ceiling t_eager / t_free; with the measured layer speed-up s, Amdahl's
   1 / ((1 - share) + share / s) is the step speed-up the kernel should give.

    python bench/moe_throughput.py [--hidden 256] [--experts 8] [--top-k 2] [--seq-len 512] [--batch 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("WANDB_MODE", "disabled")

from harness import compare, emit  # noqa: E402


def layer_variants(args) -> tuple[dict, dict]:
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from patentgpt.model.kernels import available_experts_implementations

    config = MixtralConfig(hidden_size=args.hidden, intermediate_size=args.expert_inter, num_local_experts=args.experts,
                           num_experts_per_tok=args.top_k, num_hidden_layers=1, num_attention_heads=8)
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    x = torch.randn(args.batch, args.seq_len, args.hidden)
    tokens = args.batch * args.seq_len

    def run(impl):
        def fn():
            config._experts_implementation = impl
            block.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            t0 = time.perf_counter()
            block(xi).pow(2).mean().backward()
            return tokens, time.perf_counter() - t0
        return fn

    impls = [i for i in available_experts_implementations() if i != "batched_mm"]
    return {i: run(i) for i in impls}, {"tokens_per_layer_call": tokens, "implementations": impls}


def model_variants(args) -> dict:
    import torch

    from patentgpt.config import load_config
    from patentgpt.model.build import build_model
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.dist import init_distributed
    from patentgpt.train.engine import deepspeed_config, make_engine

    init_distributed()
    shape = [f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}", "model.num_heads=8",
             "model.num_kv_heads=8", f"data.seq_len={args.seq_len}", f"train.micro_batch_size={args.batch}",
             f"train.global_batch_size={args.batch}", "deepspeed.zero_stage=0", "train.precision=fp32",
             f"model.max_position_embeddings={max(1024, args.seq_len)}"]
    moe_cfg = load_config(PretrainConfig, REPO / "configs/pretrain/demo_moe.yaml", [
        *shape, f"model.intermediate_size={args.expert_inter}", f"model.num_experts={args.experts}",
        f"model.experts_per_token={args.top_k}", "model.experts_implementation=eager"])
    dense_cfg = load_config(PretrainConfig, REPO / "configs/pretrain/demo_dense.yaml", [
        *shape, f"model.intermediate_size={args.expert_inter * args.top_k}"])
    vocab = 2048
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq_len))
    tokens = args.batch * args.seq_len
    engines = {}
    for name, cfg in (("moe", moe_cfg), ("dense", dense_cfg)):
        model = build_model(cfg.model, vocab)
        ds = deepspeed_config(cfg, args.batch, 1, args.batch)
        engines[name], _ = make_engine(model, cfg, ds)
        engines[name].train()
    params = {n: sum(p.numel() for p in e.module.parameters()) for n, e in engines.items()}

    def step(name, impl=None):
        def fn():
            engine = engines[name]
            if impl:
                engine.module.config._experts_implementation = impl
            t0 = time.perf_counter()
            out = engine(input_ids=ids, labels=ids, use_cache=False)
            engine.backward(out.loss)
            engine.step()
            return tokens, time.perf_counter() - t0
        return fn

    from patentgpt.model.kernels import available_experts_implementations

    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register("bench_free", lambda self, h, idx, w: h * w.sum(-1, keepdim=True).to(h.dtype))
    impls = [i for i in available_experts_implementations() if i != "batched_mm"]
    variants = {f"moe_{i}": step("moe", i) for i in impls}
    variants["moe_experts_free"] = step("moe", "bench_free")
    variants["dense_equal_active"] = step("dense")
    return variants, {"params": params, "tokens_per_step": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--expert-inter", type=int, default=344, help="each expert's intermediate size")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    real_stdout = os.dup(1)  # only the JSON goes to stdout
    os.dup2(2, 1)
    lv, linfo = layer_variants(args)
    layer = compare(lv, baseline="eager", repeats=args.repeats + 2, warmup=1, unit="tokens")
    mv, minfo = model_variants(args)
    model = compare(mv, baseline="moe_eager", repeats=args.repeats, warmup=1, unit="tokens")
    free = model["ratio_vs_baseline"]["moe_experts_free"]  # t_eager / t_free, per round
    share = 1 - 1 / free["median"]
    analysis = {
        "experts_share_of_eager_step": round(share, 3),
        "experts_share_range": [round(1 - 1 / free["min"], 3), round(1 - 1 / free["max"], 3)],
        "step_ceiling_if_experts_free": free["median"],
        "expected_step_speedup_from_layer": {
            impl: round(1 / ((1 - share) + share / r["of_sums"]), 3)
            for impl, r in layer["ratio_vs_baseline"].items()},
        "moe_step_time_vs_dense_equal_active": round(
            model["tokens_per_s"]["dense_equal_active"] / model["tokens_per_s"]["moe_eager"], 3),
    }
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    emit({"moe_layer_fwd_bwd": {**layer, **linfo}, "whole_model_train_step": {**model, **minfo}},
         extra={"shape": vars(args), "analysis": analysis}, out=args.out)


if __name__ == "__main__":
    main()
