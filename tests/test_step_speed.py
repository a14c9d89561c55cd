"""Issue #14: the faster training step (fused AdamW, MoE statistics on logging steps only), an MFU peak
you can trust, the venv's own TORCH_EXTENSIONS_DIR, and the benchmarks' subprocess variants."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train import make_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from harness import compare, subprocess_variant  # noqa: E402


def test_adamw_is_fused_on_cpu_and_matches_the_for_loop_update():
    from patentgpt.model.build import build_model
    from patentgpt.model.config import ModelSection
    from patentgpt.train.optim import SkippableAdamW, param_groups

    torch.manual_seed(0)
    models = [build_model(ModelSection(hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                                       num_kv_heads=2), vocab_size=320) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    before = {k: v.clone() for k, v in models[0].state_dict().items()}
    ids = torch.randint(0, 320, (2, 32))
    opts = [SkippableAdamW(param_groups(m, 0.1), lr=1e-2, implementation=impl)
            for m, impl in zip(models, ["auto", "for_loop"])]
    assert opts[0].param_groups[0]["fused"] and not opts[1].param_groups[0]["fused"]
    for _ in range(3):
        for m, opt in zip(models, opts):
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert not torch.equal(a.detach(), before[name]), name  # every parameter was updated
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_fused_device_is_a_clear_error(monkeypatch):
    from patentgpt.train import optim

    monkeypatch.setattr(optim, "fused_supported", lambda device: False)
    assert optim.adamw_kernel("auto") == {"fused": False, "foreach": True}
    with pytest.raises(ValueError, match="optim.implementation"):
        optim.adamw_kernel("fused")


def test_expert_load_is_computed_on_logging_steps_only(tmp_path, demo_shards, ip_tokenizer_dir, monkeypatch):
    from patentgpt.model import routing
    from patentgpt.train.stages import run_stage

    calls = []  # router entropy and the logged z-loss: per-layer statistics computed on logging steps only
    real = routing.router_entropy
    monkeypatch.setattr(routing, "router_entropy", lambda *a: calls.append(1) or real(*a))
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "mixtral",
                      ["train.max_steps=5", "optim.warmup_steps=2", "logging.every_steps=2", "checkpoint.export_at_end=false",
                       "checkpoint.every_steps=100", "run.name=moe"])
    run_stage("pretrain", cfg)
    records = [json.loads(ln) for ln in (tmp_path / "moe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5]  # every 2 steps and the last
    assert len(calls) == 3 * 2  # 3 logged steps x 2 micro-batches (global batch 8 / micro 4), not 5 x 2
    for r in records:
        loads = [v for k, v in r.items() if k.startswith("expert_load/layer0/")]
        assert len(loads) == 4 and abs(sum(loads) - 1) < 1e-6
    # the peak MFU divides by: logged once, with the run's first record
    assert records[0]["peak_source"] == "measured:cpu:float32" and "peak_tflops" not in records[1]
    spread = records[0]["peak_spread_tflops"]
    assert spread["min"] <= spread["median"] <= spread["max"] and spread["n"] == 10
    for r in records:
        assert r["mfu"] == pytest.approx(r["tflops"] / records[0]["peak_tflops"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_process_without_the_lone_allreduce_trains_identically(tmp_path, demo_shards, ip_tokenizer_dir,
                                                                   monkeypatch, precision):
    from patentgpt.train import engine
    from patentgpt.train.stages import run_stage

    common = ["train.max_steps=3", "optim.warmup_steps=1", "deepspeed.zero_stage=0", f"train.precision={precision}",
              "checkpoint.export_at_end=false", "checkpoint.every_steps=100"]
    fast = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=a"]))
    monkeypatch.setattr(engine, "skip_lone_allreduce", lambda *a: None)
    slow = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=b"]))
    assert fast["losses"] == slow["losses"] and fast["losses"][-1][1] < fast["losses"][0][1]


def test_peak_comes_from_config_then_datasheet_then_measurement(monkeypatch):
    from patentgpt.model import flops

    assert flops.run_peak(500.0).source == "config" and flops.run_peak(500.0).flops == 500e12
    measured = flops.run_peak(None, torch.bfloat16)
    assert measured.source == "measured:cpu:bfloat16" and measured.flops > 0
    assert measured.record()["peak_spread_tflops"]["n"] == 10
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 PCIe")
    assert flops.run_peak(None).source == "table:H100 PCIE"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert flops.run_peak(None).flops == 989.4e12


def test_torch_extensions_dir_is_the_venvs_unless_set(monkeypatch):
    from patentgpt.train.dist import venv_torch_extensions_dir

    assert venv_torch_extensions_dir({"TORCH_EXTENSIONS_DIR": "/mine"}) == "/mine"
    env = {}
    monkeypatch.setattr(sys, "prefix", "/opt/venvs/a")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert venv_torch_extensions_dir(env) == "/opt/venvs/a/torch_extensions" == env["TORCH_EXTENSIONS_DIR"]
    monkeypatch.setattr(sys, "prefix", "/usr")
    assert venv_torch_extensions_dir({}) is None  # no venv: torch's default cache


def test_torch_extensions_dir_reaches_launched_ranks(tmp_path):
    """The launcher's entry point sets it before DeepSpeed loads; a user's setting passes through."""
    import subprocess

    from patentgpt.train.dist import env_without_rendezvous

    probe = ("import os, sys; from patentgpt.train import cli; "
             "cli._train = lambda a: print(os.environ.get('TORCH_EXTENSIONS_DIR')) or 0; sys.exit(cli.main('pretrain', "
             "['--config', 'x.yaml']))")
    env = {k: v for k, v in env_without_rendezvous().items() if k != "TORCH_EXTENSIONS_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    expect = os.path.join(sys.prefix, "torch_extensions") if sys.prefix != sys.base_prefix else "None"
    assert out.stdout.strip() == expect
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)


def test_subprocess_variants_alternate_and_keep_their_records(tmp_path):
    log = tmp_path / "order.txt"

    def child(name, tokens, seconds):
        code = (f"import json; open({str(log)!r}, 'a').write({name!r}); print('library noise'); "
                f"print(json.dumps({{'tokens': {tokens}, 'seconds': {seconds}, 'useful': 1}}))")
        return subprocess_variant([sys.executable, "-c", code], work="tokens")

    variants = {"a": child("a", 300, 1.0), "b": child("b", 100, 1.0)}
    res = compare(variants, baseline="b", repeats=2, warmup=1, progress=False)
    assert log.read_text() == "abbaab"
    assert res["ratio_vs_baseline"]["a"]["median"] == 3.0
    assert len(variants["a"].records) == 3 and variants["a"].records[0]["useful"] == 1
    bad = subprocess_variant([sys.executable, "-c", "import sys; sys.exit('broken child')"])
    with pytest.raises(RuntimeError, match="broken child"):
        bad()


def test_autocast_needs_fp32_weights_and_reaches_deepspeed(tmp_path, demo_shards, ip_tokenizer_dir):
    from patentgpt.config import ConfigError
    from patentgpt.train.engine import deepspeed_config

    with pytest.raises(ConfigError, match="train.autocast"):
        make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", ["train.autocast=true", "train.precision=bf16"])
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", ["train.autocast=true", "train.precision=fp32"])
    ds = deepspeed_config(cfg, 4, 2, 8)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not ds["bf16"]["enabled"]


def test_foreach_clip_trains_like_deepspeeds_clip_and_logs_the_same_norm(tmp_path, demo_shards, ip_tokenizer_dir,
                                                                         monkeypatch):
    """A clip small enough to bite every step: torch's multi-tensor clip gives DeepSpeed's losses and
    the logged pre-clip gradient norm is the one computed separately before the step."""
    from patentgpt.train import engine
    from patentgpt.train.stages import run_stage

    common = ["train.max_steps=4", "optim.warmup_steps=1", "deepspeed.zero_stage=0", "train.grad_clip=0.05",
              "logging.every_steps=1", "checkpoint.export_at_end=false", "checkpoint.every_steps=100"]
    calls, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(k) or real(*a, **k))
    fast = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=a"]))
    assert len(calls) == 4 and all(k["foreach"] for k in calls)  # one multi-tensor clip per step
    monkeypatch.setattr(engine, "foreach_clip", lambda *a: None)
    slow = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=b"]))
    for (_, a), (_, b) in zip(fast["losses"], slow["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    norms = [[json.loads(ln)["grad_norm"] for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("a", "b")]
    assert min(norms[0]) > 0.05  # the clip acted on every step
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)
