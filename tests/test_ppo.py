"""PPO on the training core with tiny models built from scratch: generation's log-probs equal the
training forward's, reward rises on held-out prompts with the KL bounded, kill and resume
reproduces the uninterrupted run, 2 ranks (gloo) make the same first update as one. Prompts are
the pipeline's synthesized instructions over the embedded demo corpus (real patent records)."""

import json
import subprocess
import sys

import pytest
import torch

from patentgpt.config import load_config
from patentgpt.train.config import PPOConfig
from tests._chat_support import synth_records, write_chat
from tests.conftest import CORPUS, REPO

TINY = ["model.init_from=null", "model.hidden_size=64", "model.intermediate_size=160", "model.num_layers=2",
        "model.num_heads=4", "model.num_kv_heads=2", "model.max_position_embeddings=512"]
CJK = "ppo.reward_fn_args={pattern: '[\\u4e00-\\u9fff]'}"
RISE = 0.08  # held-out reward (share of CJK tokens): observed 0.326 -> 0.455 in 6 iterations
MAX_KL = 5.0  # observed 1.39 nats per 12-token response


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """The pipeline's synthesized instructions (long prompts: abstracts, claims)."""
    return write_chat(tmp_path_factory.mktemp("ppo_prompts") / "synth.jsonl", synth_records())


@pytest.fixture(scope="module")
def title_prompts(tmp_path_factory):
    """Short prompts from the demo corpus: write the abstract of a patent from its title (the real
    abstract is the reference answer), plus the planted bad records of tests/_chat_support.py."""
    records = []
    for name in ("patents_en.jsonl", "patents_zh.jsonl"):
        for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            ask = (f"Write the abstract of a patent titled: {r['title']}" if r["lang"] == "en"
                   else f"请为题为《{r['title']}》的专利撰写摘要。")
            records.append({"messages": [{"role": "user", "content": ask},
                                         {"role": "assistant", "content": r["abstract"]}], "lang": r["lang"]})
    return write_chat(tmp_path_factory.mktemp("ppo_titles") / "titles.jsonl", records, bad=True)


def ppo_overrides(tmp_path, tok, prompts, name, extra=()):
    return [*TINY, f"data.tokenizer={tok}", f"data.sources=[{{name: ip, path: {prompts}}}]", "data.max_prompt_len=96",
            "ppo.reward_model=null", "ppo.critic_from=null", "ppo.reward_fn=token_fraction", CJK,
            f"run.output_dir={tmp_path}", f"run.name={name}", "logging.wandb.mode=disabled",
            "optim.lr=2e-5", "eval.holdout=0", *extra]  # the tests' own settings, whatever the demo's


def ppo_config(*args, **kw):
    return load_config(PPOConfig, REPO / "configs" / "ppo" / "demo.yaml", ppo_overrides(*args, **kw))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_generation_logprobs_equal_the_training_forward(ip_tokenizer_dir, prompts_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.model.build import hf_config, round_up
    from patentgpt.model.config import ModelSection
    from patentgpt.train.stages.ppo import rollout as ro
    from patentgpt.train.stages.ppo.losses import token_logprobs

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    torch.manual_seed(0)
    m = ModelSection(hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(hf_config(m, round_up(len(tok)), tok)).eval()
    records = [json.loads(line) for line in prompts_file.read_text(encoding="utf-8").splitlines()[:5]]
    rows = [tok(tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"][-40 - 9 * i:] for i, r in enumerate(records)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask = ro.left_pad(rows, pad)
    assert (mask.sum(-1) == torch.tensor([len(r) for r in rows])).all() and mask[0, 0] == 0  # left padding
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    for temperature in (1.0, 0.7):
        torch.manual_seed(1)
        gen = ro.generate(model, ids, mask, max_new_tokens=12, temperature=temperature, top_p=0.9,
                          pad_id=pad, stop_ids=stop, return_logprobs=True)
        inputs = ro.sequence_inputs(ids, mask, gen["response"], gen["response_mask"])
        with torch.no_grad():
            logp = token_logprobs(ro.action_logits(model, inputs, ids.shape[1]), gen["response"], temperature)
        keep = gen["response_mask"].bool()
        assert keep.sum() > 20
        diff = (logp - gen["gen_logprobs"])[keep].abs().max()
        assert diff < 1e-4, (temperature, float(diff))
        # padding after a stop token is not part of the response
        for row, m_ in zip(gen["response"], gen["response_mask"]):
            n = int(m_.sum())
            assert all(int(t) not in stop for t in row[: n - 1])


def test_response_mask_ends_at_the_first_stop_token():
    from patentgpt.train.stages.ppo.rollout import response_mask

    r = torch.tensor([[5, 6, 2, 0, 0], [5, 9, 9, 9, 9], [3, 7, 3, 7, 0]])
    assert response_mask(r, [2, 3]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def pretrained_actor(tmp_path_factory, demo_shards, ip_tokenizer_dir):
    """A tiny LLaMA pretrained briefly on the demo corpus (it has seen English and Chinese), exported."""
    from patentgpt.train.stages import run_stage
    from tests.test_train import make_config

    out = tmp_path_factory.mktemp("ppo_actor")
    summary = run_stage("pretrain", make_config(out, demo_shards, ip_tokenizer_dir, "llama", [
        "run.name=pre", "train.max_steps=60", "checkpoint.every_steps=60", "optim.lr=3e-3",
        "model.max_position_embeddings=512", "data.seq_len=128"]))
    return summary["export_dir"]


@pytest.mark.slow
def test_reward_rises_on_held_out_prompts_with_kl_bounded(tmp_path, ip_tokenizer_dir, title_prompts, pretrained_actor):
    """The briefly pretrained actor, rewarded for the share of CJK tokens it writes."""
    from transformers import AutoModelForSequenceClassification

    from patentgpt.train.stages import run_stage

    cfg = ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "learn", [
        f"model.init_from={pretrained_actor}", "ppo.rollout_batch_size=32", "ppo.generation_batch_size=16",
        "ppo.ppo_epochs=2", "ppo.max_new_tokens=12", "ppo.kl_coef=0.05", "ppo.critic_lr=1e-3", "optim.lr=3e-4",
        "train.micro_batch_size=16", "train.global_batch_size=16", "train.max_steps=24", "checkpoint.every_steps=24",
        "eval.holdout=0.15", "eval.max_batches=2"])
    summary = run_stage("ppo", cfg)
    assert summary["finished"] and summary["skipped_steps"] == 0
    assert summary["data"]["ip"]["kept"] > 100 and summary["data"]["ip"]["set_aside"]["malformed_json"] == 1
    evals = dict(summary["evals"])
    rows = [r for r in metrics(tmp_path / "learn") if "reward_mean" in r]
    assert [r["iteration"] for r in rows[::4]] == list(range(1, 7))
    before, after = evals[0], evals[24]
    assert after["val/reward"] > before["val/reward"] + RISE, (before, after)
    assert max(r["reward_mean"] for r in rows[-8:]) > rows[0]["reward_mean"] + RISE
    assert before["val/kl"] == 0.0 and 0 < after["val/kl"] < MAX_KL  # nats per 12-token response
    assert max(r["clip_fraction"] for r in rows) > 0 and all(r["entropy"] > 0 for r in rows)
    assert summary["export_max_logit_diff"] < 1e-5
    run = tmp_path / "learn"
    assert (run / "ppo.png").is_file() and (run / "loss.png").is_file()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted({s["iteration"] for s in samples}) == list(range(1, 7)) and all(s["prompt"] for s in samples)
    critic = AutoModelForSequenceClassification.from_pretrained(summary["export_critic_dir"])
    assert critic.config.num_labels == 1


SMALL = ["ppo.rollout_batch_size=8", "ppo.generation_batch_size=4", "ppo.ppo_epochs=2", "ppo.max_new_tokens=6",
         "optim.lr=1e-3", "ppo.critic_lr=1e-3", "ppo.kl_target=0.5", "ppo.kl_horizon=100", "train.micro_batch_size=4",
         "train.global_batch_size=8", "checkpoint.export_at_end=false"]
COMPARED = ("loss", "policy_loss", "value_loss", "reward_mean", "kl", "kl_coef", "approx_kl", "entropy")


def test_kill_and_resume_reproduces_the_next_iteration(tmp_path, ip_tokenizer_dir, title_prompts):
    from patentgpt.train.stages import run_stage

    common = [*SMALL, "train.max_steps=8", "checkpoint.every_steps=4"]
    full = run_stage("ppo", ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "full", common))
    part = ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "part", common)
    first = run_stage("ppo", part.model_copy(update={"train": part.train.model_copy(update={"stop_at_step": 4})}))
    assert not first["finished"] and first["steps"] == 4
    second = run_stage("ppo", part)  # a new launch: resumes from step 4 (iteration 2 of 4)
    assert second["finished"]
    a, b = metrics(tmp_path / "full"), metrics(tmp_path / "part")
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 9))
    assert len({r["kl_coef"] for r in a}) > 1  # the adaptive controller moved (and was restored)
    for ra, rb in zip(a[4:], b[4:]):
        for key in COMPARED:
            assert abs(ra[key] - rb[key]) <= 1e-6, (ra["step"], key, ra[key], rb[key])
    samples = [json.loads(line) for line in (tmp_path / "part" / "samples.jsonl").read_text().splitlines()]
    full_samples = [json.loads(line) for line in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()]
    assert samples == full_samples


def test_shipped_ppo_configs_validate():
    for path in sorted((REPO / "configs" / "ppo").glob("*.yaml")):
        cfg = load_config(PPOConfig, path)
        assert cfg.steps_per_iteration() >= 1 and cfg.checkpoint.every_steps % cfg.steps_per_iteration() == 0


def test_config_requires_checkpoints_on_iteration_boundaries(tmp_path, ip_tokenizer_dir, title_prompts):
    from patentgpt.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.every_steps 3 must be a multiple of the 2"):
        ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "bad", [*SMALL, "train.max_steps=8",
                                                                      "checkpoint.every_steps=3"])
    with pytest.raises(ConfigError, match="ppo.reward_model / ppo.reward_fn"):
        ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "bad", ["ppo.reward_fn=null"])


@pytest.mark.slow
def test_two_gloo_ranks_make_the_same_first_update_as_one(tmp_path, ip_tokenizer_dir, title_prompts):
    """One iteration (two optimizer steps) on 2 CPU ranks over gloo == one process: each rank
    generates its chunks, the rollout is gathered, each rank trains on its half of a mini-batch."""
    import yaml
    from safetensors.torch import load_file

    from patentgpt.train.dist import env_without_rendezvous
    from patentgpt.train.stages import run_stage

    common = [*SMALL, "ppo.ppo_epochs=1", "train.max_steps=1", "checkpoint.every_steps=1",
              "checkpoint.export_at_end=true"]
    one = run_stage("ppo", ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "one", common))
    cfg = ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "two", common)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    env = {**env_without_rendezvous(), "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                           str(REPO / "launch" / "ppo.py"), "--config", str(cfg_path)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1]
    for key in COMPARED:
        assert abs(a[0][key] - b[0][key]) <= 1e-5, (key, a[0][key], b[0][key])
    for export in ("export", "export_critic"):  # the updated weights
        wa = load_file(tmp_path / "one" / export / "model.safetensors")
        wb = load_file(tmp_path / "two" / export / "model.safetensors")
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5, export
    assert one["export_max_logit_diff"] < 1e-5
