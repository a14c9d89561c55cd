"""SFT on the training core: assistant-only labels, packing isolation, split-invariant loss,
falling validation loss, exact resume, records set aside with reasons, chat export."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from patentgpt.config import load_config
from patentgpt.train.config import SFTConfig
from tests._chat_support import BAD_REASONS, synth_records, write_chat
from tests.conftest import REPO

TINY = ["model.hidden_size=64", "model.intermediate_size=160", "model.num_layers=2", "model.num_heads=4",
        "model.num_kv_heads=2", "model.max_position_embeddings=1024", "model.init_from=null"]


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return write_chat(tmp_path_factory.mktemp("chat") / "chat.jsonl", synth_records(), bad=True)


def sft_config(tmp_path, tok, chat, extra=()):
    return load_config(SFTConfig, REPO / "configs" / "sft" / "demo.yaml", [
        *TINY, f"data.tokenizer={tok}", f"data.sources=[{{name: ip, path: {chat}}}]", "data.seq_len=768",
        f"run.output_dir={tmp_path}", "train.micro_batch_size=4", "train.global_batch_size=8",
        "optim.warmup_steps=2", "logging.every_steps=1", "logging.wandb.mode=disabled", *extra])


def test_labels_cover_exactly_the_assistant_turns(ip_tokenizer_dir):
    from transformers import AutoTokenizer

    from patentgpt.data.chat_loader import tokenize_chat

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    messages = [{"role": "system", "content": "You are PatentGPT."},
                {"role": "user", "content": "Which claims are independent?"},
                {"role": "assistant", "content": "Claims 1 and 5."},
                {"role": "user", "content": "权利要求2从属于哪一项？"},
                {"role": "assistant", "content": "权利要求2从属于权利要求1。"}]
    ids, labels, reason = tokenize_chat(tok, messages)
    assert reason is None
    spans, cur = [], []
    for i, y in zip(ids, labels):
        if y != -100:
            assert y == i
            cur.append(int(i))
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    assert spans == ["Claims 1 and 5.<|im_end|>\n", "权利要求2从属于权利要求1。<|im_end|>\n"]
    assert "Which claims" not in "".join(spans)


def test_packed_conversations_do_not_attend_to_each_other(ip_tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from patentgpt.data.chat_loader import fill_row, tokenize_chat

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    records = synth_records()
    a, a2, b = (tokenize_chat(tok, r["messages"])[:2] for r in (records[0], records[5], records[1]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                         attn_implementation="sdpa")).eval()
    seq = len(a[0]) + len(a2[0]) + len(b[0]) + 8

    def logits_of_b(first):
        ids, _, pos = fill_row([first, b], seq, tok.eos_token_id)
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids)[None], position_ids=torch.from_numpy(pos)[None],
                        use_cache=False).logits[0]
        return out[len(first[0]): len(first[0]) + len(b[0])]

    with torch.no_grad():
        alone = model(input_ids=torch.from_numpy(b[0])[None]).logits[0]
    with_a, with_a2 = logits_of_b(a), logits_of_b(a2)
    assert torch.allclose(with_a, alone, atol=1e-5), (with_a - alone).abs().max()
    assert torch.allclose(with_a2, alone, atol=1e-5)
    # without restarting positions (plain causal packing) B would see A: the test can fail
    ids, _, _ = fill_row([a, b], seq, tok.eos_token_id)
    with torch.no_grad():
        leaky = model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0][len(a[0]): len(a[0]) + len(b[0])]
    assert (leaky - alone).abs().max() > 1e-3


def _weights(export_dir):
    from safetensors.torch import load_file

    return load_file(str(export_dir / "model.safetensors"))


def test_loss_and_update_do_not_depend_on_the_split(tmp_path, ip_tokenizer_dir, chat_file):
    """One global batch of 8 as 1 micro-batch of 8, as 4 of 2, and on two ranks: same loss, same weights."""
    from patentgpt.train.stages import run_stage

    # Adam's default eps (1e-8) turns a noise-level gradient (~1e-10, rare tokens' rows) into a full
    # lr-sized step whose sign depends on summation order; eps 1e-3 keeps updates proportional to the
    # gradient, so comparing weights tests what it should: the same gradient, whatever the split
    common = ["train.max_steps=2", "optim.warmup_steps=0", "eval.holdout=0", "checkpoint.every_steps=100",
              "deepspeed.zero_stage=0", "optim.lr=3e-3", "optim.eps=1e-3"]
    cfg8 = sft_config(tmp_path, ip_tokenizer_dir, chat_file, [*common, "run.name=m8", "train.micro_batch_size=8"])
    a = run_stage("sft", cfg8)
    b = run_stage("sft", sft_config(tmp_path, ip_tokenizer_dir, chat_file,
                                    [*common, "run.name=m2", "train.micro_batch_size=2"]))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(sft_config(
        tmp_path, ip_tokenizer_dir, chat_file, [*common, "run.name=r2", "train.micro_batch_size=4"]).model_dump_json())))
    from patentgpt.train.dist import env_without_rendezvous

    env = {**env_without_rendezvous(), "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                           str(REPO / "launch" / "sft.py"), "--config", str(cfg_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = [json.loads(ln) for ln in (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()]
    # the micro-batches really hold different numbers of target tokens
    from patentgpt.train.stages.sft import SFTStage
    from patentgpt.train.stage import RunContext

    stage = SFTStage(cfg8)
    ctx = RunContext(cfg=cfg8, rank=0, world=1, micro=2, accum=4, global_batch=8, run_dir=tmp_path / "probe",
                     dtype=torch.float32)
    stage.setup(ctx)
    counts = [stage.count_targets(x) for x in stage.make_loader(ctx).next_step()]
    assert len(set(counts)) > 1, counts
    for (s1, l1), (s2, l2), r in zip(a["losses"], b["losses"], two):
        assert abs(l1 - l2) <= 1e-5 and abs(l1 - r["loss"]) <= 1e-5, (l1, l2, r["loss"])
    wa, wb, wr = _weights(tmp_path / "m8" / "export"), _weights(tmp_path / "m2" / "export"), _weights(tmp_path / "r2" / "export")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
        assert torch.allclose(wa[k], wr[k], atol=1e-5), k


def test_sft_validation_loss_falls_resume_is_exact_and_bad_records_are_set_aside(tmp_path, ip_tokenizer_dir, chat_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.train.stages import run_stage

    common = ["train.max_steps=30", "eval.holdout=0.1", "eval.every_steps=15", "checkpoint.every_steps=100",
              "optim.lr=3e-3"]
    full = run_stage("sft", sft_config(tmp_path, ip_tokenizer_dir, chat_file, [*common, "run.name=full"]))
    evals = dict(full["evals"])
    assert sorted(evals) == [0, 15, 30]
    assert evals[30]["val/loss"] < evals[0]["val/loss"] - 1.0, evals
    assert {"val/lang_en/loss", "val/lang_zh/loss", "val/ip_en/ppl", "val/ip_zh/ppl"} <= set(evals[30])
    # every planted bad record is counted with its reason and written out
    report = full["data"]["ip"]
    assert report["read"] == report["kept"] + sum(report["set_aside"].values())
    assert BAD_REASONS <= set(report["set_aside"]), report
    rejects = [json.loads(ln) for ln in (tmp_path / "full" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(report["set_aside"].values()) and all(r["line"] > 0 for r in rejects)
    # stop at step 12, resume to 30: the same losses as the uninterrupted run
    part_cfg = sft_config(tmp_path, ip_tokenizer_dir, chat_file, [*common, "run.name=part"])
    first = run_stage("sft", part_cfg.model_copy(update={"train": part_cfg.train.model_copy(update={"stop_at_step": 12})}))
    assert first["steps"] == 12 and not first["finished"]
    second = run_stage("sft", part_cfg)
    resumed = dict(second["losses"])
    for step, loss in full["losses"][12:]:
        assert abs(resumed[step] - loss) <= 1e-6, (step, resumed[step], loss)
    # the export answers a chat prompt through its template
    export = tmp_path / "full" / "export"
    assert full["export_max_logit_diff"] < 1e-5
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a concise patent title."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_a_source_with_nothing_usable_is_an_error_naming_it(tmp_path, ip_tokenizer_dir):
    from patentgpt.errors import DataError
    from patentgpt.train.stages import run_stage

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.sources\[ip\]: no usable conversation"):
        run_stage("sft", sft_config(tmp_path, ip_tokenizer_dir, bad, ["run.name=bad"]))
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run([sys.executable, "-m", "patentgpt.cli", "sft", "--config",
                           str(REPO / "configs" / "sft" / "demo.yaml"), "--set", f"data.tokenizer={ip_tokenizer_dir}",
                           "--set", "model.init_from=null", "--set", f"data.sources=[{{name: ip, path: {missing}}}]",
                           "--set", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"},
                          cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "data.sources[ip].path" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
