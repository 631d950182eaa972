import math

import pytest
import torch

from promptrl.algos import ppo_math as pm

MASK = torch.tensor([[1.0, 1.0, 0.0]])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])  # the 9.0 sits on padding and must not leak in
    adv, ret = pm.gae(rewards, values, MASK, gamma=1.0, lam=0.95)
    # t=1 is terminal: delta = 1 - 0.2 = 0.8; t=0: delta = 0 + 0.2 - 0.5 = -0.3, adv = -0.3 + 0.95 * 0.8
    torch.testing.assert_close(adv, torch.tensor([[0.46, 0.8, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.96, 1.0, 0.0]]))


def test_kl_penalty_on_every_token_and_score_on_the_last_real_one():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -7.0]])
    rewards, kl = pm.kl_penalized_rewards(torch.tensor([2.0]), logp, ref, MASK, beta=0.5)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.5 + 2.0, 0.0]]))


def test_clipped_policy_loss_by_hand():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    new = old + torch.tensor([[math.log(1.5), math.log(0.5), 5.0]])
    adv = torch.tensor([[1.0, -1.0, 3.0]])
    loss, stats = pm.policy_loss(new, old, adv, MASK, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["clipfrac"].item() == pytest.approx(1.0)
    assert stats["approx_kl"].item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)


def test_clipped_value_loss_by_hand():
    loss, _ = pm.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]),
                            torch.tensor([[1.0]]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.7 - 2.0) ** 2)


def test_padding_after_eos_never_enters_a_loss():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    tensors = {k: torch.randn(3, 5) for k in ("logp", "old", "ref", "values", "old_values")}
    noisy = {k: torch.where(mask.bool(), v, torch.randn(3, 5) * 100) for k, v in tensors.items()}

    def losses(t):
        rewards, _ = pm.kl_penalized_rewards(torch.tensor([1.0, -2.0, 0.5]), t["logp"], t["ref"], mask, 0.2)
        adv, ret = pm.gae(rewards, t["old_values"], mask, 1.0, 0.95)
        adv = pm.masked_whiten(adv, mask)
        pl, ps = pm.policy_loss(t["logp"], t["old"], adv, mask, 0.2)
        vl, _ = pm.value_loss(t["values"], t["old_values"], ret, mask, 0.2)
        return torch.stack([pl, vl, ps["approx_kl"], ps["clipfrac"]]), adv, ret

    a, b = losses(tensors), losses(noisy)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    assert (a[1][mask == 0] == 0).all() and (a[2][mask == 0] == 0).all()


def test_adaptive_kl_controller_moves_towards_target():
    ctl = pm.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=60.0, n_steps=4)  # far above target: error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 4 / 10_000))
    ctl.update(current_kl=0.0, n_steps=4)
    assert ctl.value < 0.2 * (1 + 0.2 * 4 / 10_000)
    fixed = pm.AdaptiveKLController(0.2, 6.0, 10_000, adaptive=False)
    fixed.update(60.0, 4)
    assert fixed.value == 0.2


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    assert pm.explained_variance(ret, ret, torch.ones(1, 3)) == pytest.approx(1.0)
    assert pm.explained_variance(torch.zeros(1, 3) + 2.0, ret, torch.ones(1, 3)) == pytest.approx(0.0)


# --- group-relative advantages (GRPO, Dr. GRPO, RLOO) ----------------------------------------------

def test_grpo_advantage_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    adv, degenerate = pm.group_advantages(r, torch.zeros(4, dtype=torch.long), "grpo")
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # Bessel-corrected, as TRL and verl
    torch.testing.assert_close(adv, torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-6))
    assert degenerate == 0


def test_drgrpo_advantage_is_the_centred_reward_without_std():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    adv, _ = pm.group_advantages(r, torch.zeros(4, dtype=torch.long), "drgrpo")
    torch.testing.assert_close(adv, torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    # scaling every reward scales the advantage (GRPO's would not move)
    adv10, _ = pm.group_advantages(r * 10, torch.zeros(4, dtype=torch.long), "drgrpo")
    torch.testing.assert_close(adv10, adv * 10)


def test_rloo_baseline_leaves_the_sample_itself_out():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    adv, _ = pm.group_advantages(r, torch.zeros(4, dtype=torch.long), "rloo")
    # r_i - mean of the other three: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    torch.testing.assert_close(adv, torch.tensor([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]))
    # which is G/(G-1) times the centred reward
    torch.testing.assert_close(adv, (r - r.mean()) * 4 / 3)


@pytest.mark.parametrize("estimator", pm.GROUP_ESTIMATORS)
def test_groups_of_different_sizes_each_get_their_own_baseline(estimator):
    # group 7: three samples; group 2: two samples; group 5: one sample (nothing to compare with)
    r = torch.tensor([1.0, 4.0, 10.0, 20.0, 4.0, 9.0])
    groups = torch.tensor([7, 7, 2, 2, 7, 5])
    adv, degenerate = pm.group_advantages(r, groups, estimator)
    g7, g2 = torch.tensor([1.0, 4.0, 4.0]), torch.tensor([10.0, 20.0])
    want = {
        "grpo": lambda g: (g - g.mean()) / (g.std() + 1e-6),
        "drgrpo": lambda g: g - g.mean(),
        "rloo": lambda g: g - (g.sum() - g) / (len(g) - 1),
    }[estimator]
    torch.testing.assert_close(adv[[0, 1, 4]], want(g7))
    torch.testing.assert_close(adv[[2, 3]], want(g2))
    assert adv[5] == 0 and degenerate == 1
    if estimator == "grpo":  # the two-sample group: +-1/sqrt(2) whatever its scale
        torch.testing.assert_close(adv[[2, 3]], torch.tensor([-1.0, 1.0]) / math.sqrt(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("estimator", pm.GROUP_ESTIMATORS)
def test_a_degenerate_group_contributes_exactly_zero_and_no_nan(estimator):
    scores = torch.tensor([5.0, 5.0, 5.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # rewards = scores plus a little KL penalty: GRPO's std division would blow those 0.01s up to
    # unit-size advantages; the group's task scores are equal, so it must contribute nothing
    rewards = scores + torch.tensor([0.01, -0.01, 0.0, 0.0, 0.0])
    adv, degenerate = pm.group_advantages(rewards, groups, estimator, scores=scores)
    assert torch.isfinite(adv).all()
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and degenerate == 1
    assert (adv[3:] != 0).all()
    # all groups degenerate: all zeros, and a policy loss of exactly zero
    adv, degenerate = pm.group_advantages(torch.full((4,), 2.5), torch.tensor([0, 0, 1, 1]), estimator)
    assert adv.tolist() == [0.0] * 4 and degenerate == 2
    mask = torch.ones(4, 3)
    loss, _ = pm.policy_loss(torch.randn(4, 3), torch.randn(4, 3), adv[:, None] * mask, mask, 0.2)
    assert loss.item() == 0.0
    assert pm.degenerate_groups(scores, groups) == 1


def test_sequence_rewards_add_the_summed_kl_penalty():
    kl = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 0.0]])  # already zero on padding
    torch.testing.assert_close(pm.sequence_rewards(torch.tensor([3.0, 1.0]), kl, beta=0.5),
                               torch.tensor([3.0 - 0.5 * -0.5, 1.0 - 0.5 * 2.0]))
    # the same total reward the per-token penalty gives an episode
    logp, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.0, -7.0]])
    per_token, kl = pm.kl_penalized_rewards(torch.tensor([2.0]), logp, ref, MASK, beta=0.5)
    torch.testing.assert_close(pm.sequence_rewards(torch.tensor([2.0]), kl, 0.5), per_token.sum(-1))


def test_k3_kl_by_hand_and_zero_at_the_reference():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-2.0, -2.0, 50.0]])  # 50 sits on padding: exp() there must not overflow
    k3 = pm.k3_kl(logp, ref, MASK)
    torch.testing.assert_close(k3, torch.tensor([[math.exp(-1) + 1 - 1, 0.0, 0.0]]))
    assert (pm.k3_kl(logp, logp, MASK) == 0).all()


def test_drgrpo_loss_divides_by_a_constant_not_by_the_token_count():
    # two samples of 1 and 3 real tokens, ratio 1: the loss is -sum(A * tokens) / (2 * max_len)
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0])[:, None] * mask
    logp = torch.randn(2, 3)
    loss, _ = pm.policy_loss(logp, logp, adv, mask, 0.2, norm=2 * 8)
    assert loss.item() == pytest.approx(-(2.0 * 1 - 1.0 * 3) / 16)
    token_mean, _ = pm.policy_loss(logp, logp, adv, mask, 0.2)  # GRPO / RLOO: over the 4 real tokens
    assert token_mean.item() == pytest.approx(-(2.0 * 1 - 1.0 * 3) / 4)
    # the per-sample weight grows with length under the constant, not under the token-mean per sample
    grad = lambda norm: torch.autograd.grad(pm.policy_loss(lp := logp.clone().requires_grad_(), logp, adv, mask, 0.2,
                                                           norm=norm)[0], lp)[0]
    torch.testing.assert_close(grad(16), -adv / 16)


@pytest.mark.parametrize("norm", [None, 2 * 8])
def test_padding_never_changes_a_group_loss_or_advantage(norm):
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    t = {k: torch.randn(2, 3) for k in ("logp", "old", "ref")}
    scores, groups = torch.tensor([1.0, 3.0]), torch.tensor([0, 0])

    def everything(t, mask):
        kl = (t["old"] - t["ref"]) * mask
        seq, _ = pm.group_advantages(pm.sequence_rewards(scores, kl, 0.1), groups, "grpo")
        adv = seq[:, None] * mask
        pl, ps = pm.policy_loss(t["logp"], t["old"], adv, mask, 0.2, norm)
        klloss = pm.aggregate(pm.k3_kl(t["logp"], t["ref"], mask), mask, norm)
        return torch.stack([pl, ps["approx_kl"], ps["clipfrac"], klloss]), seq

    # five more padding columns, filled with garbage
    wide_mask = torch.cat([mask, torch.zeros(2, 5)], 1)
    wide = {k: torch.cat([v, torch.randn(2, 5) * 100], 1) for k, v in t.items()}
    a, b = everything(t, mask), everything(wide, wide_mask)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
