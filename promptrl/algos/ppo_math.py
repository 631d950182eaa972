"""The arithmetic of PPO as pure functions on [batch, tokens] tensors, each unit-tested alone.

A prompt is one episode: the agent's tokens are the actions, the task reward arrives on the last
token, and every token pays a KL penalty to a reference policy (TRL's RLHF formulation, which
StablePrompt uses). `mask` is 1 on real response tokens and 0 on the padding after the first
EOS, so padding never enters a loss, an advantage or a statistic.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalized_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * (log pi - log pi_ref) on every action, plus the scalar task
    score on the last real token. Returns (rewards, per-token KL estimate)."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    last = mask.sum(-1).long().clamp(min=1) - 1
    rewards[torch.arange(len(score), device=last.device), last] += score
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response; the state after the last real
    token is terminal (value 0). Returns (advantages, returns)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (to minimise) and CleanRL's diagnostics."""
    log_ratio = (logp - old_logp) * mask  # zero on padding, where exp() could overflow to inf
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            # Schulman's low-variance estimator of KL(old || new): E[(r - 1) - log r]
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, 0.5 * max((v - R)^2, (v_clipped - R)^2), as in TRL / PPO2."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over real tokens: 1 is a perfect critic, <= 0 a useless one."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - values
    var_e = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float("nan") if var_r == 0 else float(1 - var_e / var_r)


class AdaptiveKLController:
    """Ziegler et al.'s controller (TRL's AdaptiveKLController): nudge beta so the observed KL
    tracks `target`, by at most 20% of n_steps/horizon per update."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float, adaptive: bool = True):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon
        self.adaptive = adaptive

    def update(self, current_kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
