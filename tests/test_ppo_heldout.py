"""PPO's held-out evaluation reports the reward model's raw score, so "before" and "after" are on
one scale: it used to be divided by the rollouts' running normaliser, which is empty before
training (raw score) and fitted to the rollouts after it (a different scale)."""

import json
import math

import pytest

from tests.test_ppo import metrics, ppo_config, title_prompts  # noqa: F401 - title_prompts is a fixture

FROZEN = ["optim.lr=1e-30", "ppo.critic_lr=1e-30"]  # updates far below fp32 resolution: the models stay as they are


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, ip_tokenizer_dir):
    """A randomly initialised one-label reward model on the IP tokenizer (scores of a few 0.1)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from patentgpt.model.build import hf_config, round_up
    from patentgpt.model.config import ModelSection

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    torch.manual_seed(3)
    config = hf_config(ModelSection(hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4, num_kv_heads=2,
                                    max_position_embeddings=512), round_up(len(tok)), tok)
    config.num_labels = 1
    out = tmp_path_factory.mktemp("ppo_rm")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    return out


def test_held_out_reward_is_the_raw_score_before_and_after(tmp_path, ip_tokenizer_dir, title_prompts,  # noqa: F811
                                                         tiny_reward_model):
    from patentgpt.train.stages import run_stage
    from patentgpt.train.stages.ppo.demo import evidence_line, paired_change

    cfg = ppo_config(tmp_path, ip_tokenizer_dir, title_prompts, "frozen", [
        *FROZEN, f"ppo.reward_model={tiny_reward_model}", "ppo.reward_fn=null", "ppo.rollout_batch_size=8",
        "ppo.generation_batch_size=4", "ppo.ppo_epochs=1", "ppo.max_new_tokens=6", "train.micro_batch_size=4",
        "train.global_batch_size=8", "train.max_steps=2", "checkpoint.every_steps=2", "checkpoint.export_at_end=false",
        "eval.holdout=0.15", "eval.max_batches=2", "ppo.eval_samples=2"])
    stale = tmp_path / "frozen"  # an earlier run's logs in the same run directory: a fresh run starts them anew
    stale.mkdir()
    for name in ("heldout.jsonl", "samples.jsonl"):
        (stale / name).write_text(json.dumps({"iteration": 0, "prompt_index": 0, "reward": 99.0}) + "\n")
    summary = run_stage("ppo", cfg)
    evals = dict(summary["evals"])
    samples = [json.loads(line) for line in (stale / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["iteration"] for s in samples] == [1] * 4 + [2] * 4
    before, after = evals[0], evals[2]
    rows = [r for r in metrics(tmp_path / "frozen") if "reward_mean" in r]
    # the rollouts' normaliser is fitted by now and far from the identity (else this test could not fail)
    raw = rows[-1]["rm_score_mean"]
    assert abs(rows[-1]["reward_std"] / rows[-1]["rm_score_std"] - 1) > 0.2, rows[-1]
    # an unchanged actor, the same sampling seeds: the same held-out responses and the same reward
    assert after["val/reward"] == pytest.approx(before["val/reward"], abs=1e-6), (before, after)
    assert after["val/reward_std"] == pytest.approx(before["val/reward_std"], rel=1e-5), (before, after)
    assert after["val/kl"] == pytest.approx(0.0, abs=1e-5) and before["val/reward_sem"] > 0
    held_file = tmp_path / "frozen" / "heldout.jsonl"
    held = [json.loads(line) for line in held_file.read_text(encoding="utf-8").splitlines()]
    assert sorted({r["iteration"] for r in held}) == [0, 2]  # PPO iterations done at each evaluation
    first, last = ([r for r in held if r["iteration"] == it] for it in (0, 2))
    assert len(first) == len(last) == 16 and [r["response"] for r in first] == [r["response"] for r in last]
    assert all(r["reward"] == r["rm_score"] for r in first)
    # two samples of each of 8 prompts (different seeds); a prompt's reward is the mean of its samples
    assert sorted((r["prompt_index"], r["sample"]) for r in first) == [(i, j) for i in range(8) for j in range(2)]
    assert any(a["response"] != b["response"] for a, b in zip(first[:8], first[8:]))
    per_prompt = [sum(r["reward"] for r in first if r["prompt_index"] == i) / 2 for i in range(8)]
    mean = sum(per_prompt) / 8
    assert mean == pytest.approx(before["val/reward"], abs=1e-6)
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / 7)
    assert before["val/reward_sem"] == pytest.approx(sd / math.sqrt(8), rel=1e-4)
    change = paired_change(held_file)
    assert change["prompts"] == 8 and change["mean"] == pytest.approx(0.0, abs=1e-6) and change["rose"] == 0
    line = evidence_line({"reward": {"before": raw, "after": raw}, "iterations": 1, "kl_final": 0.0,
                          "val_reward": {"before": before["val/reward"], "after": after["val/reward"],
                                         "sem_before": before["val/reward_sem"], "sem_after": after["val/reward_sem"]},
                          "val_reward_change": change})
    assert "paired change +0.000" in line and "over 8 prompts: 0 rose, 0 fell" in line


def test_paired_change_pairs_prompts_of_the_first_and_last_evaluation(tmp_path):
    from patentgpt.train.stages.ppo.demo import paired_change

    # the middle evaluation is not used; the last has two samples of each prompt (averaged)
    rewards = {0: [[1.0, 2.0, 3.0]], 4: [[9.0, 9.0, 9.0]], 8: [[2.0, 1.0, 5.0], [4.0, 1.0, 3.0]]}
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"iteration": it, "prompt_index": i, "sample": j, "reward": r}) + "\n"
                            for it, samples in rewards.items() for j, rs in enumerate(samples)
                            for i, r in enumerate(rs)), encoding="utf-8")
    c = paired_change(path)
    diffs = [2.0, -1.0, 1.0]
    sd = math.sqrt(sum((d - 2 / 3) ** 2 for d in diffs) / 2)
    assert c["iterations"] == [0, 8] and c["prompts"] == 3 and (c["rose"], c["fell"]) == (2, 1)
    assert c["mean"] == pytest.approx(2 / 3) and c["sem"] == pytest.approx(sd / math.sqrt(3))
    assert paired_change(tmp_path / "missing.jsonl") is None
