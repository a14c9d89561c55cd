"""PPO's arithmetic against direct reference computations: GAE and returns, whitening, the clipped
policy and value losses, KL estimators and the adaptive KL controller, reward registry."""

import math

import pytest
import torch

from patentgpt.train.stages.ppo.advantages import gae, whiten
from patentgpt.train.stages.ppo.kl import KLController, kl_per_token
from patentgpt.train.stages.ppo.losses import policy_loss, value_loss


def random_batch(seed=0, B=6, T=11):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full row
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return rewards, values, mask, lengths


def direct_gae(r, v, L, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_L = 0."""
    adv = []
    for t in range(L):
        total = 0.0
        for l in range(L - t):
            k = t + l
            v_next = v[k + 1] if k + 1 < L else 0.0
            total += (gamma * lam) ** l * (r[k] + gamma * v_next - v[k])
        adv.append(total)
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_and_returns_equal_direct_reference(gamma, lam):
    rewards, values, mask, lengths = random_batch()
    # garbage beyond each response must not leak in
    rewards = rewards + (1 - mask) * 1e3
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b in range(rewards.shape[0]):
        L = int(lengths[b])
        ref = direct_gae(rewards[b].tolist(), values[b].tolist(), L, gamma, lam)
        assert torch.allclose(adv[b, :L].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6), (b, gamma, lam)
        assert torch.allclose(ret[b, :L].double(), torch.tensor(ref, dtype=torch.float64) + values[b, :L], atol=1e-6)
        assert (adv[b, L:] == 0).all() and (ret[b, L:] == 0).all()


def test_whitening_uses_only_masked_entries():
    _, x, mask, _ = random_batch(1)
    w = whiten(x.float() * 3 + 7, mask)
    sel = w[mask.bool()]
    assert abs(float(sel.mean())) < 1e-5 and abs(float(sel.std(unbiased=False)) - 1) < 1e-4
    assert (w[~mask.bool()] == 0).all()


def test_policy_loss_is_minus_mean_advantage_at_ratio_one():
    _, adv, mask, _ = random_batch(2)
    logp = torch.randn(adv.shape, dtype=torch.float64)
    loss_sum, stats = policy_loss(logp, logp.clone(), adv, mask, clip=0.2)
    mean_adv = float((adv * mask).sum() / mask.sum())
    assert abs(float(loss_sum) / float(mask.sum()) + mean_adv) < 1e-9
    assert stats["clipped"] == 0 and abs(stats["approx_kl_sum"]) < 1e-12


def test_clipping_engages_outside_the_trust_region():
    old = torch.zeros(1, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    # ratios 1.5 (A>0: clipped at 1.2), 0.5 (A>0: not clipped, pessimistic), 0.5 (A<0: clipped at 0.8), 1.5 (A<0: not)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]], dtype=torch.float64)).requires_grad_(True)
    loss_sum, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    assert torch.allclose(loss_sum, torch.tensor(-1.2 - 0.5 + 0.8 + 1.5, dtype=torch.float64))
    assert stats["clipped"] == 4  # every ratio is outside [0.8, 1.2]
    loss_sum.backward()
    # clipped terms carry no gradient; the others the unclipped surrogate's -A * ratio
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5, 0.0, 1.5]], dtype=torch.float64))


def test_value_loss_clips_moves_away_from_old_values():
    old = torch.zeros(1, 2)
    ret = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.1, 0.9]], requires_grad=True)
    loss_sum, stats = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: max((0.1-1)^2, (0.1-1)^2); token 1: max((0.9-1)^2, (0.2-1)^2) = 0.64 (clipped)
    assert abs(float(loss_sum.detach()) - 0.5 * (0.81 + 0.64)) < 1e-6 and stats["value_clipped"] == 1


def test_kl_estimators_and_controller():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    r = torch.exp(ref - logp)
    assert torch.allclose(kl_per_token(logp, ref, "k3"), r - 1 - torch.log(r))
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    fixed = KLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.coef == 0.1
    adaptive = KLController(0.1, target=1.0, horizon=100)
    adaptive.update(10.0, 50)  # far above target: error clipped at +0.2
    assert math.isclose(adaptive.coef, 0.1 * (1 + 0.2 * 0.5))
    adaptive.update(0.0, 50)
    assert adaptive.coef < 0.1 * 1.1
    again = KLController(0.1, target=1.0, horizon=100)
    again.load_state_dict(adaptive.state_dict())
    assert again.coef == adaptive.coef


def test_reward_registry():
    from patentgpt.config import ConfigError
    from patentgpt.train.stages.ppo.rewards import Sample, resolve

    s = Sample(prompt=[{"role": "user", "content": "IPC?"}], response=" H01M 10/42. ", response_ids=[5, 6, 7],
               answer="h01m 10/42", pieces=["H01M", " 10", "/42"])
    assert resolve("exact_answer")(s) == 1.0
    assert resolve("exact_answer")(Sample(s.prompt, "G06F", [1], answer="H01M")) == 0.0
    assert resolve("format_regex")(s, pattern=r"[A-H]\d\d[A-Z] \d+/\d+\.?") == 1.0
    assert resolve("length_target")(s, target=3) == 0.0 and resolve("length_target")(s, target=6) == -0.5
    assert resolve("token_fraction")(s, pattern=r"\d") == 1.0
    assert resolve("patentgpt.train.stages.ppo.rewards:exact_answer") is resolve("exact_answer")
    with pytest.raises(ConfigError, match="ppo.reward_fn"):
        resolve("no_such_reward")
