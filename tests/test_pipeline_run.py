"""Whole runs of the corpus pipeline: accounting, shards for the pretraining loader, determinism,
resumability, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _pipeline_support import EXACT_DUP, NEAR_DUP_EN, NEAR_DUP_ZH, PLANTED_BAD, fixture_config, fixture_data
from patentgpt.data.pipeline.docstore import iter_docs
from patentgpt.data.pipeline.runner import run_pipeline


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    from _pipeline_support import build_small_tokenizer

    return build_small_tokenizer(tmp_path_factory.mktemp("pipe_tok"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, small_tokenizer) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipe_full") / "run"
    cfg = fixture_config(out, tokenizer=str(small_tokenizer), num_proc=1,
                         synth={"enabled": True, "tasks": ["title_from_abstract", "claim_type"], "seed": 1})
    data = cfg.mixtures.model_dump()
    data["stages"]["stage2"]["sources"].append({"source": "synth", "name": "instructions", "epochs": 1})
    cfg.mixtures = type(cfg.mixtures).model_validate(data)
    return out, run_pipeline(cfg, log=lambda s: None)


def quiet(msg: str) -> None:
    pass


def test_report_accounts_for_every_record(full_run):
    out, report = full_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["total"] == report["total"]
    t = report["total"]
    assert t["read"] == t["kept"] + sum(t["removed"].values())
    for src, row in report["sources"].items():
        assert row["read"] == row["kept"] + sum(row["removed"].values()), src
    en = report["sources"]["patents_en"]
    assert en["read"] == 16 and en["removed"] == {"exact_dup": 1, "near_dup": 1, "malformed_json": 1,
                                                   "not_an_object": 1, "missing_field": 1,
                                                   "undecodable_utf8": 1, "wrong_type": 2}
    assert report["sources"]["patents_zh"]["removed"] == {"near_dup": 1}
    assert [f["reason"] for f in report["file_issues"]] == ["empty_file"]
    # every removal is in rejects.jsonl with its reason and source location
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    by_loc = {(r["loc"].rsplit(":", 1)[1], r["reason"]) for r in rejects if r["source"] == "patents_en"}
    assert {(str(n), reason) for n, reason in PLANTED_BAD.items()} <= by_loc
    dups = {r["id"]: (r["reason"], r["duplicate_of"]["id"]) for r in rejects if "duplicate_of" in r}
    assert dups == {EXACT_DUP[0]: ("exact_dup", EXACT_DUP[1]), NEAR_DUP_EN[0]: ("near_dup", NEAR_DUP_EN[1]),
                    NEAR_DUP_ZH[0]: ("near_dup", NEAR_DUP_ZH[1])}
    assert sum(1 for r in rejects if r["reason"] != "empty_file") == sum(t["removed"].values())
    clusters = [json.loads(line) for line in open(out / "dedup" / "dedup_clusters.jsonl")]
    assert sorted(c["kind"] for c in clusters) == ["exact", "near", "near"]
    # the boilerplate line of the law text was cut, the document kept
    law = [d for d in iter_docs(out / "dedup" / "docs.jsonl") if d["source"] == "ip_law"]
    assert len(law) == 2 and not any("All rights reserved" in d["text"] or "<p>" in d["text"] for d in law)


def test_shards_load_in_the_pretraining_loader_and_decode_to_kept_text(full_run, small_tokenizer):
    from transformers import AutoTokenizer

    from patentgpt.config import load_config
    from patentgpt.data.loader import MixtureLoader
    from patentgpt.data.shards import ShardSet, TokenizerInfo
    from patentgpt.train.config import PretrainConfig

    out, report = full_run
    tok = AutoTokenizer.from_pretrained(small_tokenizer)
    kept = list(iter_docs(out / "dedup" / "docs.jsonl"))
    for name in ("patents_en", "patents_zh", "ip_law"):
        shards = ShardSet(out / "mixtures" / "stage1" / name)
        shards.check_tokenizer(TokenizerInfo.from_tokenizer(tok, name=Path(small_tokenizer).name))
        texts = [d["text"] for d in kept if d["source"] == name]
        assert len(shards) == len(texts) == report["stages"]["stage1"][name]["docs"]
        for i, text in enumerate(texts):
            assert tok.decode(shards.doc(i).tolist()) == text
    instructions = ShardSet(out / "mixtures" / "stage2" / "instructions")
    assert len(instructions) == report["synth"]["examples"] > 0
    assert "<|im_start|>" in tok.decode(instructions.doc(0).tolist())

    # a pretraining config points at the stage's mixture.yaml
    mixture = out / "mixtures" / "stage2" / "mixture.yaml"
    cfg = load_config(PretrainConfig, Path(__file__).resolve().parents[1] / "configs/pretrain/demo_dense.yaml",
                      [f"data.mixture={mixture}"])
    assert Path(cfg.data.tokenizer) == Path(small_tokenizer).resolve()
    assert [s.name for s in cfg.data.sources] == ["patents", "ip_law", "instructions"]
    w = {s.name: s.weight for s in cfg.data.sources}
    stage2 = report["stages"]["stage2"]
    assert w["ip_law"] == 2 * stage2["ip_law"]["tokens"] and w["patents"] == stage2["patents"]["tokens"]
    sources = [(s.name, ShardSet(s.path), s.weight) for s in cfg.data.sources]
    loader = MixtureLoader(sources, seq_len=64, micro_batch_size=2, grad_accum_steps=1, seed=3,
                           eos_id=tok.eos_token_id, bos_id=tok.bos_token_id)
    seqs, src = loader.next_global_batch()
    assert seqs.shape == (2, 64) and seqs.max() < len(tok) and (seqs[:, 0] == tok.bos_token_id).any()


def test_data_card(full_run):
    out, _ = full_run
    card = json.loads((out / "card" / "data_card.json").read_text())
    assert card["records"]["total"]["read"] == 28
    assert set(card["stages"]) == {"stage1", "stage2"}
    assert card["stages"]["stage1"]["patents_zh"]["by_lang"]["zh"]["tokens"] > 0
    for img in card["images"].values():
        assert (out / "card" / img).read_bytes()[:4] == b"\x89PNG"
    md = (out / "card" / "data_card.md").read_text()
    assert "| patents_en | 16 | 8 |" in md and "## Stage `stage2`" in md


def test_two_runs_give_byte_identical_shards(full_run, small_tokenizer, tmp_path):
    out, _ = full_run
    out2 = tmp_path / "run2"
    cfg = fixture_config(out2, tokenizer=str(small_tokenizer), num_proc=2,
                         steps=["ingest", "clean", "lang", "filter", "dedup", "mixtures"])
    run_pipeline(cfg, log=quiet)
    files = sorted(p.relative_to(out2 / "mixtures" / "stage1") for p in (out2 / "mixtures" / "stage1").rglob("*")
                   if p.is_file())
    assert any(f.suffix == ".bin" for f in files)
    for f in files:
        assert (out / "mixtures" / "stage1" / f).read_bytes() == (out2 / "mixtures" / "stage1" / f).read_bytes(), f
    a = (out / "dedup" / "docs.jsonl").read_bytes()
    assert a == (out2 / "dedup" / "docs.jsonl").read_bytes()


def test_rerun_skips_finished_steps_and_redoes_what_changed(tmp_path):
    cfg = fixture_config(tmp_path / "run")
    first = run_pipeline(cfg, log=quiet)
    assert first["ran"] == ["ingest", "clean", "lang", "filter", "dedup"]
    done = {s: json.loads((tmp_path / "run" / s / "DONE").read_text()) for s in first["ran"]}
    again = run_pipeline(cfg, log=quiet)
    assert again["ran"] == [] and again["total"] == first["total"]
    assert all(json.loads((tmp_path / "run" / s / "DONE").read_text()) == done[s] for s in done)
    # a filter setting changed: only filter and what follows are redone
    changed = fixture_config(tmp_path / "run", ["filters.length.min_chars=1000"])
    third = run_pipeline(changed, log=quiet)
    assert third["ran"] == ["filter", "dedup"] and third["total"]["removed"].get("too_short", 0) > 0
    forced = run_pipeline(changed, force_steps=("lang",), log=quiet)
    assert forced["ran"] == ["lang", "filter", "dedup"]


def test_a_step_killed_midway_leaves_no_done_marker_and_is_redone(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = fixture_config(out)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("patentgpt.data.pipeline.dedup.decide", crash)  # after the signing pass
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, log=quiet)
    assert (out / "filter" / "DONE").is_file()
    assert not (out / "dedup").exists() and (out / ".dedup.tmp").is_dir()
    assert not (out / "report.json").exists()
    monkeypatch.undo()
    report = run_pipeline(cfg, log=quiet)
    assert report["ran"] == ["dedup"] and report["skipped"] == ["ingest", "clean", "lang", "filter"]
    assert (out / "dedup" / "DONE").is_file() and not (out / ".dedup.tmp").exists()
    assert report["total"]["kept"] == 19
    # killed while redoing a finished step (forced): the complete older output stays in place
    before = (out / "dedup" / "DONE").read_text()
    monkeypatch.setattr("patentgpt.data.pipeline.dedup.decide", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, force_steps=("dedup",), log=quiet)
    assert (out / "dedup" / "DONE").read_text() == before


def test_disabled_optional_steps_pass_documents_through_and_gzip_is_deterministic(tmp_path):
    steps = ["ingest", "clean", "lang", "filter", "dedup", "rewrite", "synth"]
    outs = []
    for k in range(2):
        cfg = fixture_config(tmp_path / f"run{k}", steps=steps, compress=True)
        report = run_pipeline(cfg, log=quiet)
        assert report["steps"]["rewrite"]["skipped"] == "disabled"
        assert report["steps"]["synth"]["skipped"] == "disabled"
        assert report["total"]["kept"] == 19
        outs.append((tmp_path / f"run{k}" / "dedup" / "docs.jsonl.gz").read_bytes())
    assert outs[0] == outs[1]
    assert not (tmp_path / "run0" / "rewrite" / "docs.jsonl").exists()


def test_config_errors_name_the_key_and_exit_2(tmp_path, capsys):
    import yaml

    from patentgpt.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(fixture_data(tmp_path / "run")))
    assert main(["data", "run", str(path), "--set", "filters.length.min_chars=-1"]) == 2
    assert "filters.length.min_chars" in capsys.readouterr().err
    assert main(["data", "run", str(path), "--set", "dedup.bandz=3"]) == 2
    assert "dedup.bandz: unknown key" in capsys.readouterr().err
    assert main(["data", "run", str(path), "--set", "steps=[clean, ingest]"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["data", "run", str(path), "--set", "sources.0.paths=[nope.jsonl]"]) == 2
    assert "sources.0.paths" in capsys.readouterr().err
    bad_mix = ["--set", "steps=[ingest, mixtures]", "--set", f"mixtures.tokenizer={tmp_path}"]
    assert main(["data", "run", str(path), *bad_mix]) == 2
    assert "mixtures.tokenizer" in capsys.readouterr().err
    assert main(["data", "run", str(path), "--force-step", "card"]) == 2
    assert not (tmp_path / "run").exists()  # nothing ran


def test_shipped_configs_validate():
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig

    repo = Path(__file__).resolve().parents[1]
    for name in ("demo", "shared_patents"):
        cfg = load_config(DataPipelineConfig, repo / "configs" / "data" / f"{name}.yaml")
        assert "mixtures" in cfg.steps and set(cfg.mixtures.stages) == {"stage1", "stage2"}


def test_demo_config_runs_on_the_demo_corpus(tmp_path, small_tokenizer, monkeypatch):
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    cfg = load_config(DataPipelineConfig, repo / "configs/data/demo.yaml",
                      [f"output_dir={tmp_path / 'demo'}", f"mixtures.tokenizer={small_tokenizer}", "num_proc=1",
                       "steps=[ingest, clean, lang, filter, dedup, synth, mixtures]"])
    report = run_pipeline(cfg, log=quiet)
    assert report["total"]["read"] == 183 and report["total"]["kept"] >= 180
    assert {s["tokens"] > 0 for st in report["stages"].values() for s in st.values()} == {True}
    assert np.isclose(sum(1 for _ in open(tmp_path / "demo" / "synth" / cfg.synth.output_name)),
                      report["synth"]["examples"])


@pytest.mark.shared_data
def test_shared_patents_config_on_real_data(shared_data, small_tokenizer, tmp_path):
    """The shipped real-data config, 200 records per source: accounting, dedup across sources,
    shards that decode to the kept text."""
    from transformers import AutoTokenizer

    from patentgpt.config import apply_overrides, load_config, load_yaml_tree
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.shards import ShardSet

    repo = Path(__file__).resolve().parents[1]
    overrides = [f"input_root={shared_data}", f"output_dir={tmp_path / 'out'}", f"mixtures.tokenizer={small_tokenizer}",
                 "num_proc=2", "steps=[ingest, clean, lang, filter, dedup, synth, mixtures]"]
    tree = apply_overrides(load_yaml_tree(repo / "configs/data/shared_patents.yaml"), overrides)
    for src in tree["sources"]:
        src["max_records"] = 200
    cfg = load_config(DataPipelineConfig, data=tree)
    report = run_pipeline(cfg, log=quiet)
    for src, row in report["sources"].items():
        assert row["read"] == row["kept"] + sum(row["removed"].values()), src
    assert report["sources"]["cn_claims"]["read"] == 200 and report["sources"]["patentsview"]["read"] == 200
    assert report["total"]["removed"].get("exact_dup", 0) > 0  # patentsview repeats abstracts (continuations)
    tok = AutoTokenizer.from_pretrained(small_tokenizer)
    kept = {d["id"]: d["text"] for d in iter_docs(tmp_path / "out" / "dedup" / "docs.jsonl")
            if d["source"] == "historical_ocr"}
    shards = ShardSet(tmp_path / "out" / "mixtures" / "stage1" / "historical_ocr")
    assert len(shards) == len(kept) > 150
    assert tok.decode(shards.doc(0).tolist()) == next(iter(kept.values()))


@pytest.mark.parametrize("keep_original", [True, False])
def test_rewrite_step_wiring_keeps_the_accounting(tmp_path, small_tokenizer, keep_original):
    """The rewrite step with a tiny random LLaMA: rewrites replace or join their originals and
    the record accounting still adds up (a kept-beside copy stands for no input record)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(small_tokenizer)
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rewrite = {"enabled": True, "model": str(model_dir), "langs": ["zh"], "max_new_tokens": 6, "batch_size": 4,
               "max_input_tokens": 128, "keep_original": keep_original}
    cfg = fixture_config(tmp_path / "run", steps=["ingest", "clean", "lang", "filter", "dedup", "rewrite"],
                         rewrite=rewrite, filters={"length": {"min_chars": 20}})
    report = run_pipeline(cfg, log=quiet)
    assert report["total"]["read"] == report["total"]["kept"] + sum(report["total"]["removed"].values())
    docs = list(iter_docs(tmp_path / "run" / "rewrite" / "docs.jsonl"))
    rewritten = [d for d in docs if d.get("meta", {}).get("rewritten_from")]
    assert rewritten and all(d["lang"] == "zh" for d in rewritten)
    stats = json.loads((tmp_path / "run" / "rewrite" / "stats.json").read_text())["extra"]
    assert stats["added"] == (len(rewritten) if keep_original else 0)
    assert sum(d["meta"].get("records", 1) for d in docs) == report["total"]["kept"]
