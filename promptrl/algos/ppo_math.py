"""The arithmetic of PPO as pure functions on [batch, tokens] tensors, each unit-tested alone.

A prompt is one episode: the agent's tokens are the actions, the task reward arrives on the last
token, and every token pays a KL penalty to a reference policy (TRL's RLHF formulation, which
StablePrompt uses). `mask` is 1 on real response tokens and 0 on the padding after the first
EOS, so padding never enters a loss, an advantage or a statistic.

Two ways to an advantage: GAE with a learned value (the critic) per token, or a group-relative
baseline (GRPO, Dr. GRPO, RLOO): the instructions sampled from one meta-prompt form a group, and
each gets one sequence-level advantage from its reward against the group's, broadcast over its
tokens. No critic, and nothing to learn before the advantages mean something.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    """A [B, T] per-token loss as one number: the mean over the real tokens of the batch
    (`norm` None: GRPO / RLOO / PPO's token-mean), or their sum over a constant (Dr. GRPO: the
    batch's samples times the longest response allowed), which weighs every token alike however
    long its response and however wide the padding."""
    if norm is None:
        return masked_mean(loss, mask)
    return (loss * mask).sum() / norm


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


GROUP_ESTIMATORS = ("grpo", "drgrpo", "rloo")


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, estimator: str, scores: torch.Tensor | None = None,
                     eps: float = 1e-6) -> tuple[torch.Tensor, int]:
    """[N] sequence-level advantages, each sample's reward against the others of its group
    (`groups[i]`: sample i's group id; groups may differ in size):

      grpo    (r - mean) / (std + eps), std with Bessel's correction as in TRL and verl
      drgrpo  r - mean (Dr. GRPO: no std division, which favours groups that barely differ)
      rloo    r - mean of the *other* samples of the group (REINFORCE leave-one-out)

    A group whose `scores` (the task rewards; default `rewards`) are all equal says nothing about
    which sample was better: its advantages are exactly 0 — no NaN from a zero std, and no
    full-size step made of the noise left in `rewards` (e.g. a KL penalty that GRPO's std division
    would blow up to unit scale). A group of one sample is degenerate too. Returns the advantages
    and how many groups were degenerate."""
    scores = rewards if scores is None else scores
    advantages = torch.zeros_like(rewards)
    degenerate = 0
    for g in torch.unique(groups):
        idx = (groups == g).nonzero(as_tuple=True)[0].to(rewards.device)
        r, s = rewards[idx], scores[idx]
        if len(idx) < 2 or bool(s.max() == s.min()):
            degenerate += 1
            continue
        if estimator == "grpo":
            adv = (r - r.mean()) / (r.std() + eps)
        elif estimator == "drgrpo":
            adv = r - r.mean()
        elif estimator == "rloo":
            adv = r - (r.sum() - r) / (len(r) - 1)
        else:
            raise ValueError(f"unknown group estimator {estimator!r}; expected one of {GROUP_ESTIMATORS}")
        advantages[idx] = adv
    return advantages, degenerate


def degenerate_groups(scores: torch.Tensor, groups: torch.Tensor) -> int:
    """How many groups hold one sample or samples that all scored the same: groups a
    group-relative baseline learns nothing from (logged for every estimator)."""
    count = 0
    for g in torch.unique(groups):
        s = scores[(groups == g).nonzero(as_tuple=True)[0].to(scores.device)]
        count += len(s) < 2 or bool(s.max() == s.min())
    return count


def sequence_rewards(scores: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Group estimators' KL-in-reward: the per-token penalty -beta * (log pi - log pi_ref) summed
    over the response and added to the task score, the same total reward an episode gets under
    `kl_penalized_rewards` (`kl` is already zero on padding)."""
    return scores - beta * kl.sum(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's per-token KL(pi || ref) estimator for a loss term: exp(ref - logp) - (ref - logp) - 1,
    non-negative, unbiased for samples of pi, and with a gradient that pulls towards ref. Zero
    on padding."""
    d = (ref_logp - logp) * mask  # zero on padding before exp(), which could overflow there
    return (d.exp() - d - 1) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float, norm: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (to minimise), aggregated over tokens by `aggregate` (`norm`
    None: token-mean), and CleanRL's diagnostics."""
    log_ratio = (logp - old_logp) * mask  # zero on padding, where exp() could overflow to inf
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, norm)
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
