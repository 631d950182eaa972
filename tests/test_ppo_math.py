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
