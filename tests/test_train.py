"""Pretraining on real text (the demo corpus), single process, in-process DeepSpeed over gloo."""

import json
import math
import shutil

import pytest
import torch

from patentgpt.config import load_config
from patentgpt.train.config import PretrainConfig
from tests.conftest import REPO

TINY = {
    "llama": ["model.hidden_size=64", "model.intermediate_size=160", "model.num_layers=2", "model.num_heads=4",
              "model.num_kv_heads=2"],
    "mixtral": ["model.hidden_size=64", "model.intermediate_size=96", "model.num_layers=2", "model.num_heads=4",
                "model.num_kv_heads=2", "model.num_experts=4", "model.experts_per_token=2"],
}


def make_config(tmp_path, shards, tok, arch="llama", extra=()):
    config = REPO / "configs" / "pretrain" / ("demo_dense.yaml" if arch == "llama" else "demo_moe.yaml")
    overrides = [
        *TINY[arch],
        f"data.tokenizer={tok}",
        f"data.sources=[{{name: patents, path: {shards['patents']}, weight: 3}}, "
        f"{{name: ip_law, path: {shards['ip_law']}, weight: 1}}]",
        "data.seq_len=64",
        f"run.output_dir={tmp_path}",
        "train.micro_batch_size=4", "train.global_batch_size=8",
        "optim.warmup_steps=5", "logging.every_steps=1", "logging.wandb.mode=disabled", "eval.holdout=0",
        *extra,
    ]
    return load_config(PretrainConfig, config, overrides)


def metrics(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_loss_falls_on_demo_corpus_and_export_matches(tmp_path, demo_shards, ip_tokenizer_dir, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.train.stages import run_stage

    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, arch,
                      ["train.max_steps=40", "checkpoint.every_steps=20", "run.name=" + arch,
                       "deepspeed.zero_stage=" + ("0" if arch == "llama" else "2")])
    summary = run_stage("pretrain", cfg)
    losses = [l for _, l in summary["losses"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    rows = metrics(tmp_path / arch)
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in rows), key
    if arch == "mixtral":
        for layer in range(2):
            loads = [v for k, v in rows[-1].items() if k.startswith(f"expert_load/layer{layer}/")]
            assert len(loads) == 4 and abs(sum(loads) - 1.0) < 1e-4, loads
        assert all(math.isfinite(r["aux_loss"]) and r["aux_loss"] > 0 for r in rows)
        assert len(loads) == 4 and sum(loads) == pytest.approx(1.0)
        assert rows[-1]["aux_loss"] > 0
        assert (tmp_path / arch / "expert_load.png").is_file()
    assert (tmp_path / arch / "loss.png").is_file()
    # the export loads with the Auto classes and reproduces the training model's logits
    export = tmp_path / arch / "export"
    assert summary["export_max_logit_diff"] < 1e-5
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert type(model).__name__ == ("LlamaForCausalLM" if arch == "llama" else "MixtralForCausalLM")
    assert model.config.vocab_size >= len(tok)
    ids = tok("<|title|>一种电池管理系统 A battery", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    # keep-last-K: only the two newest checkpoints remain
    kept = sorted(p.name for p in (tmp_path / arch / "checkpoints").iterdir())
    assert kept == ["step_00000020", "step_00000040"]


@pytest.mark.parametrize("arch, stage", [("llama", 0), ("mixtral", 2)])
def test_resume_reproduces_uninterrupted_run(tmp_path, demo_shards, ip_tokenizer_dir, arch, stage):
    """N steps, stop, resume to 2N == an uninterrupted 2N-step run (tolerance 1e-6 on the loss)."""
    from patentgpt.train.checkpoint import latest_checkpoint
    from patentgpt.train.stages import run_stage

    common = ["train.max_steps=12", "checkpoint.every_steps=100", "checkpoint.export_at_end=false",
              f"deepspeed.zero_stage={stage}"]
    full = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, arch, [*common, "run.name=full"]))
    part = make_config(tmp_path, demo_shards, ip_tokenizer_dir, arch, [*common, "run.name=part"])
    first = run_stage("pretrain", part.model_copy(update={"train": part.train.model_copy(update={"stop_at_step": 6})}))
    assert not first["finished"] and first["steps"] == 6
    ckpts = tmp_path / "part" / "checkpoints"
    # a write killed half-way (hidden temp dir, or a step dir without its COMPLETE marker) is never resumed
    shutil.copytree(ckpts / "step_00000006", ckpts / ".tmp-step_00000009")
    shutil.copytree(ckpts / "step_00000006", ckpts / "step_00000010")
    (ckpts / "step_00000010" / "COMPLETE").unlink()
    assert latest_checkpoint(ckpts).name == "step_00000006"
    second = run_stage("pretrain", part)
    assert second["finished"]
    resumed = dict(second["losses"])
    assert sorted(resumed) == list(range(7, 13))
    for step, loss in full["losses"][6:]:
        assert abs(resumed[step] - loss) <= 1e-6, (step, resumed[step], loss)
    assert [r["step"] for r in metrics(tmp_path / "part")] == list(range(1, 13))
    assert not (ckpts / ".tmp-step_00000009").exists() and not (ckpts / "step_00000010").exists()


def test_nan_and_spike_steps_are_skipped_then_training_stops(tmp_path, demo_shards, ip_tokenizer_dir, monkeypatch):
    from patentgpt.errors import TrainingDiverged
    from patentgpt.train.lm import CausalLMStage
    from patentgpt.train.stages import run_stage

    real = CausalLMStage.micro_step
    calls = {"n": 0}
    accum = 2  # global 8 / micro 4

    def faulty(self, engine, batch, items):
        loss, stats = real(self, engine, batch, items)
        step = calls["n"] // accum + 1
        calls["n"] += 1
        if step in (4, 9):
            return loss, {**stats, "loss_sum": float("nan")}
        if step == 7:
            return loss, {**stats, "loss_sum": stats["loss_sum"] * 100}
        if step >= 12:
            return loss, {**stats, "loss_sum": float("inf")}
        return loss, stats

    monkeypatch.setattr(CausalLMStage, "micro_step", faulty)
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama",
                      ["train.max_steps=30", "run.name=faulty", "train.spike_warmup_steps=3",
                       "train.max_consecutive_bad_steps=3", "checkpoint.export_at_end=false",
                       "checkpoint.every_steps=100"])
    with pytest.raises(TrainingDiverged, match="3 consecutive bad steps"):
        run_stage("pretrain", cfg)
    rows = {r["step"]: r for r in metrics(tmp_path / "faulty")}
    assert rows[4]["skip_reason"] == "non_finite" and rows[9]["skip_reason"] == "non_finite"
    assert rows[7]["skip_reason"] == "spike"
    assert rows[11]["skipped_steps"] == 3 and "skip_reason" not in rows[11]
    assert math.isfinite(rows[11]["loss"]) and rows[11]["loss"] < rows[1]["loss"]


def test_skipped_step_leaves_weights_untouched():
    from patentgpt.train.optim import SkippableAdamW

    w = torch.nn.Parameter(torch.ones(3))
    opt = SkippableAdamW([w], lr=0.1)
    w.grad = torch.full((3,), float("nan"))
    opt.skip_next = True
    opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and not opt.state
    w.grad = torch.ones(3)
    opt.step()
    assert (w.detach() < 1).all()


def test_mismatched_shards_and_vocab_are_refused(tmp_path, demo_shards, ip_tokenizer_dir):
    from patentgpt.data.shards import ShardError
    from patentgpt.train.stages import run_stage

    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", ["model.vocab_size=512", "run.name=v"])
    with pytest.raises(ShardError, match="vocab_size 512 is smaller"):
        run_stage("pretrain", cfg)
    cfg = make_config(tmp_path, {"patents": tmp_path / "nope", "ip_law": demo_shards["ip_law"]},
                      ip_tokenizer_dir, "llama", ["run.name=m"])
    with pytest.raises(ShardError, match="not found"):
        run_stage("pretrain", cfg)


def test_loss_falls_on_shared_english_patents(tmp_path, shared_data, ip_tokenizer_dir):
    """The same tiny LLaMA learns real USPTO abstracts (../shared/data; skipped when absent)."""
    from transformers import AutoTokenizer

    from patentgpt.data.shards import ShardWriter, TokenizerInfo
    from patentgpt.data.tokenize import read_jsonl, tokenize_texts
    from patentgpt.train.stages import run_stage

    texts = list(read_jsonl([shared_data / "patents/en/patentsview_abstracts.jsonl"], text_field="abstract"))[:600]
    assert len(texts) == 600
    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    with ShardWriter(tmp_path / "shards", TokenizerInfo.from_tokenizer(tok)) as writer:
        tokenize_texts(texts, tok, writer)
    shards = {"patents": tmp_path / "shards", "ip_law": tmp_path / "shards"}
    cfg = make_config(tmp_path, shards, ip_tokenizer_dir, "llama",
                      ["train.max_steps=40", "run.name=uspto", "checkpoint.export_at_end=false",
                       "checkpoint.every_steps=100"])
    losses = [l for _, l in run_stage("pretrain", cfg)["losses"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses


def test_held_out_split_reports_loss_per_source_and_language(tmp_path, demo_shards, ip_tokenizer_dir):
    """eval.holdout keeps a seeded share of every source out of training and reports its loss and
    perplexity per source, per language and overall, at step 0, every N steps and at the end."""
    from patentgpt.train.stages import run_stage

    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama",
                      ["train.max_steps=30", "run.name=heldout", "eval.holdout=0.1", "eval.every_steps=15",
                       "checkpoint.export_at_end=false", "checkpoint.every_steps=100",
                       "eval.suite.tasks=[ipquiz]", "eval.suite.limit=4", "eval.suite.every_steps=15"])
    summary = run_stage("pretrain", cfg)
    evals = dict(summary["evals"])
    assert sorted(evals) == [0, 15, 30]
    assert evals[30]["val/loss"] < evals[0]["val/loss"] - 1.0
    # both sources hold English and Chinese documents: one group per source and language
    assert {"val/patents_en/loss", "val/patents_zh/loss", "val/ip_law_en/loss", "val/ip_law_zh/loss",
            "val/lang_en/ppl", "val/lang_zh/ppl"} <= set(evals[30]), sorted(evals[30])
    rows = metrics(tmp_path / "heldout")
    assert [r["step"] for r in rows if "val/loss" in r] == [0, 15, 30]
    assert (tmp_path / "heldout" / "loss.png").is_file()
    # benchmark tasks run on the training model during training (eval.suite)
    bench = [r for r in rows if any(k.startswith("bench/ipquiz") for k in r)]
    assert [r["step"] for r in bench] == [15, 30], bench
