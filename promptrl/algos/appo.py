"""StablePrompt's training loop: PPO on the agent's prompts, KL-anchored (APPO) or not (PPO),
with its advantage from a critic (GAE) or from a group of samples (GRPO, Dr. GRPO, RLOO).

One step: draw k demonstrations from train into each of `groups_per_step` meta-prompts, sample
`group_size` instructions from the policy for each (a group), score them all on a train batch
(one batched target call), reward = c_a*acc + c_s*margin, then update the policy adapter (and
its value head, for GAE) with the KL to the reference `algo.reference` names:

  anchor    APPO: the anchor adapter, moved by the dev comparison every update_term epochs
  base      RLHF-style PPO: the base model with adapters off
  previous  original PPO: the anchor, copied from the policy every update_term epochs

`algo.advantage` picks the estimator: gae (a value head per adapter, StablePrompt) or a group-
relative baseline (grpo, drgrpo, rloo; ppo_math.group_advantages), which needs no value head, so
none is built, trained or checkpointed. The anchor's dev check, update and rollback are the same
for every estimator. APPO's defaults (one group of prompts_per_step, ppo_epochs=4, gae) are
StablePrompt's; conf/algo/grpo.yaml is the critic-free, one-pass setting.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from promptrl.agent import ANCHOR, BASE, POLICY, Agent, Samples
from promptrl.algos import ppo_math as pm
from promptrl.algos.base import PromptOptimizer
from promptrl.errors import UserError
from promptrl.faults import crash_point
from promptrl.scoring import Scorer
from promptrl.tasks import Task

log = logging.getLogger(__name__)
REFERENCES = ("anchor", "base", "previous")
ESTIMATORS = ("gae", *pm.GROUP_ESTIMATORS)
KL_IN = ("reward", "loss")
# Keys newer than some saved runs: a run resumed from its saved config may not have them.
LATER_KEYS = {"advantage": "gae", "kl_in": "reward", "group_size": None, "groups_per_step": 1}


def setting(cfg, key: str):
    return cfg.get(key, LATER_KEYS[key])


def group_size(cfg) -> int:
    """Instructions sampled per meta-prompt: algo.group_size, or prompts_per_step (APPO's name) when null."""
    size = setting(cfg, "group_size")
    return cfg.prompts_per_step if size is None else size


def samples_per_step(cfg) -> int:
    return setting(cfg, "groups_per_step") * group_size(cfg)


def uses_critic(algo_cfg) -> bool:
    """Whether the agent needs value heads: GAE only. Optimisers without `advantage` (APE, OPRO,
    ...) keep the agent as it always was."""
    return algo_cfg.get("advantage", "gae") == "gae"


def validate(cfg) -> None:
    advantage, kl_in, size, groups = (setting(cfg, k) for k in ("advantage", "kl_in", "group_size", "groups_per_step"))
    checks = [
        (cfg.reference in REFERENCES, f"algo.reference={cfg.reference!r}; expected one of: {', '.join(REFERENCES)}"),
        (advantage in ESTIMATORS, f"algo.advantage={advantage!r}; expected one of: {', '.join(ESTIMATORS)}"),
        (kl_in in KL_IN, f"algo.kl_in={kl_in!r}; expected one of: {', '.join(KL_IN)}"),
        (cfg.update_term >= 1, f"algo.update_term={cfg.update_term}; expected an integer >= 1 (epochs between anchor checks)"),
        (cfg.update_threshold >= 0, f"algo.update_threshold={cfg.update_threshold}; expected >= 0"),
        (cfg.rollback_threshold >= 0, f"algo.rollback_threshold={cfg.rollback_threshold}; expected >= 0"),
        (size is None or size >= 2, f"algo.group_size={size}; expected >= 2 (a group needs two samples to compare)"),
        (cfg.prompts_per_step >= 2, f"algo.prompts_per_step={cfg.prompts_per_step}; expected >= 2 (advantages need a spread)"),
        (size is None or size == cfg.prompts_per_step,
         f"algo.group_size={size} with algo.prompts_per_step={cfg.prompts_per_step}; expected the same number (both are the "
         "instructions per meta-prompt), or group_size=null"),
        (groups >= 1, f"algo.groups_per_step={groups}; expected an integer >= 1 (meta-prompts per step)"),
        (cfg.epochs >= 1, f"algo.epochs={cfg.epochs}; expected >= 1"),
        (cfg.batch_size >= 1, f"algo.batch_size={cfg.batch_size}; expected >= 1"),
        (cfg.num_demos >= 1, f"algo.num_demos={cfg.num_demos}; expected >= 1"),
        (cfg.ppo_epochs >= 1, f"algo.ppo_epochs={cfg.ppo_epochs}; expected >= 1"),
        (cfg.mini_batch_size is None or cfg.mini_batch_size >= 1,
         f"algo.mini_batch_size={cfg.mini_batch_size}; expected >= 1, or null for all of a step's samples"),
        (cfg.learning_rate > 0, f"algo.learning_rate={cfg.learning_rate}; expected > 0"),
        (cfg.cliprange > 0, f"algo.cliprange={cfg.cliprange}; expected > 0 (the PPO ratio is clipped to [1-eps, 1+eps])"),
        (0 <= cfg.gamma <= 1, f"algo.gamma={cfg.gamma}; expected a discount in [0, 1]"),
        (0 <= cfg.lam <= 1, f"algo.lam={cfg.lam}; expected GAE's lambda in [0, 1]"),
        (cfg.init_kl_coef >= 0, f"algo.init_kl_coef={cfg.init_kl_coef}; expected >= 0 (0 = no KL to the reference)"),
        (cfg.kl_target > 0, f"algo.kl_target={cfg.kl_target}; expected > 0 (the KL, in nats, the adaptive controller steers to)"),
        (cfg.kl_horizon > 0, f"algo.kl_horizon={cfg.kl_horizon}; expected > 0 (samples over which beta adapts)"),
        (cfg.anchor_eval_prompts >= 1, f"algo.anchor_eval_prompts={cfg.anchor_eval_prompts}; expected >= 1"),
        (cfg.queue_size >= 1, f"algo.queue_size={cfg.queue_size}; expected >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


@dataclass
class StepSamples:
    """A step's groups side by side: [N, T] responses (padded to the widest group) and their
    mask, each sample's group id, and each group's query (run once per group in a forward)."""

    queries: list[torch.Tensor]
    responses: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor  # [N] long, on the CPU
    logprobs: torch.Tensor | None  # the sampler's per-token log-probs (agent.backend=vllm), else None

    @classmethod
    def of(cls, groups: list[Samples], pad_id: int) -> StepSamples:
        group = torch.cat([torch.full((len(g.responses),), i, dtype=torch.long) for i, g in enumerate(groups)])
        if len(groups) == 1:
            g = groups[0]
            return cls([g.query], g.responses, g.mask, group, g.logprobs)
        width = max(g.responses.shape[1] for g in groups)
        pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)
        logprobs = None if any(g.logprobs is None for g in groups) else torch.cat([pad(g.logprobs, 0.0) for g in groups])
        return cls([g.query for g in groups], torch.cat([pad(g.responses, pad_id) for g in groups]),
                   torch.cat([pad(g.mask, 0.0) for g in groups]), group, logprobs)

    def __len__(self) -> int:
        return len(self.responses)


class Pass(NamedTuple):
    """One forward over some of a step's samples: per-token log-probs, values (GAE) and entropy."""

    logp: torch.Tensor
    values: torch.Tensor | None
    entropy: torch.Tensor

    def detached(self, order: torch.Tensor) -> Pass:
        """Without gradients, rows taken in `order`."""
        order = order.to(self.logp.device)
        values = None if self.values is None else self.values.detach()[order]
        return Pass(self.logp.detach()[order], values, self.entropy[order])


class APPOTrainer(PromptOptimizer):
    validate = staticmethod(validate)
    draws_demo_queries = True

    def __init__(self, cfg, task: Task, scorer: Scorer, agent: Agent, out_dir: Path | None, **kwargs):
        super().__init__(cfg, task, scorer, agent, out_dir, **kwargs)
        self.advantage, self.kl_in = setting(cfg, "advantage"), setting(cfg, "kl_in")
        self.group_size, self.groups_per_step = group_size(cfg), setting(cfg, "groups_per_step")
        self.critic = self.advantage == "gae"
        if self.critic != (agent.value_heads is not None):
            raise ValueError(f"algo.advantage={self.advantage} needs an agent {'with' if self.critic else 'without'} value "
                             "heads (Agent(value_heads=uses_critic(cfg)))")
        self.optimizer = torch.optim.Adam(agent.trainable_parameters(), lr=cfg.learning_rate)
        self.kl_ctl = pm.AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon, cfg.adaptive_kl)
        self.epoch = 0  # epochs finished
        self.batch_in_epoch = 0  # steps done inside the current epoch
        self.anchor_history: list[dict] = []

    # --- one PPO step ----------------------------------------------------------------------
    def make_query(self) -> torch.Tensor:
        return self.demo_query(self.cfg.meta_prompt, self.cfg.instruction_prefix)

    def ppo_step(self, batch, queries: list[torch.Tensor] | None = None) -> dict:
        """Sample a group from each query (default: groups_per_step fresh meta-prompts), score all
        of the step's prompts on `batch` in one target call, and update."""
        t0 = time.time()
        if queries is None:
            queries = [self.make_query() for _ in range(self.groups_per_step)]
        groups = self.agent.sample_groups(queries, self.group_size, POLICY)
        prompts = [p for g in groups for p in g.prompts]
        t1 = time.time()
        rewards, parts = self.score_prompts(prompts, batch)
        t2 = time.time()
        row = {"prompts": prompts, "reward_mean": rewards.mean(), "reward_max": rewards.max(),
               "acc_mean": parts["acc"].mean(), "acc_max": parts["acc"].max(), "margin_mean": parts["margin"].mean(),
               "response_len": torch.cat([g.mask.sum(-1) for g in groups]).mean(),
               # per prompt, aligned with `prompts` (the run's page and wandb's prompts table read them)
               "prompt_rewards": rewards.tolist(), "prompt_accs": parts["acc"].tolist(),
               "prompt_lens": torch.cat([g.mask.sum(-1) for g in groups]).tolist()}
        if not torch.isfinite(rewards).all():
            log.warning("step %d: non-finite reward %s; step skipped", self.step, rewards.tolist())
            return {**row, "skipped": "non-finite reward"}
        for prompt, r in zip(prompts, self.admission_rewards(prompts, rewards).tolist()):
            self.queue.offer(prompt, r, self.step)
        crash_point("mid-step")
        with self.ledger.timed("update"):
            row.update(self.update(groups, rewards))
        row.update(time_generate=t1 - t0, time_score=t2 - t1, time_update=time.time() - t2)
        return row

    def admission_rewards(self, prompts: list[str], batch_rewards: torch.Tensor) -> torch.Tensor:
        """The rewards prompts enter the queue with; the PPO update always uses the batch's."""
        if not self.cfg.queue_rescore:
            return batch_rewards
        return self.score_prompts(prompts, self.task.train)[0]

    def reference_adapter(self) -> str:
        return BASE if self.cfg.reference == "base" else ANCHOR

    def forward(self, batch: StepSamples, idx: torch.Tensor | None, adapter: str, with_values: bool) -> Pass:
        """The samples `idx` (None: all, in order) under `adapter`: one evaluate_actions per group,
        so each group's query runs once and its samples share its KV cache."""
        idx = torch.arange(len(batch)) if idx is None else idx
        parts, where = [], []
        for g, query in enumerate(batch.queries):
            sel = (batch.group[idx] == g).nonzero(as_tuple=True)[0]
            if len(sel) == 0:
                continue
            responses = batch.responses[idx[sel]]
            if len(batch.queries) > 1:  # padded to the widest group: run only this group's width
                responses = responses[:, :max(1, int(batch.mask[idx[sel]].sum(-1).max()))]
            logp, values = self.agent.evaluate_actions(query, responses, adapter, with_values=with_values)
            parts.append(Pass(logp, values, self.agent.last_entropy))
            where.append(sel)
        if len(parts) == 1 and len(batch.queries) == 1:
            return parts[0]
        width = batch.responses.shape[1]
        back = torch.argsort(torch.cat(where)).to(parts[0].logp.device)
        join = lambda ts: torch.cat([F.pad(t, (0, width - t.shape[1])) for t in ts])[back]
        values = join([p.values for p in parts]) if with_values else None
        return Pass(join([p.logp for p in parts]), values, join([p.entropy for p in parts]))

    @torch.no_grad()
    def targets(self, batch: StepSamples, old: Pass, scores: torch.Tensor, mask: torch.Tensor) -> dict:
        """What the update fits, from the sampling policy's pass `old`: the reference's log-probs
        and the per-token KL to it, the advantages (and GAE's returns). The reference runs in
        eval mode (no dropout) and not at all when beta is 0."""
        cfg, beta = self.cfg, self.kl_ctl.value
        ref_logp = None
        if beta != 0:
            training = self.agent.model.training
            self.agent.model.eval()
            ref_logp = self.forward(batch, None, self.reference_adapter(), with_values=False).logp
            self.agent.model.train(training)
        penalty = beta if self.kl_in == "reward" else 0.0
        out = {"ref_logp": ref_logp, "kl": None if ref_logp is None else (old.logp - ref_logp) * mask,
               "degenerate": pm.degenerate_groups(scores, batch.group)}
        if self.critic:
            rewards, _ = pm.kl_penalized_rewards(scores, old.logp, old.logp if ref_logp is None else ref_logp, mask, penalty)
            advantages, returns = pm.gae(rewards, old.values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = pm.masked_whiten(advantages, mask)
            out.update(advantages=advantages, returns=returns)
        else:
            seq = scores if out["kl"] is None else pm.sequence_rewards(scores, out["kl"], penalty)
            advantages, _ = pm.group_advantages(seq, batch.group, self.advantage, scores=scores)
            out.update(advantages=advantages[:, None] * mask, returns=None)
        return out

    def apply(self, loss: torch.Tensor) -> bool:
        """Backward and one optimizer step, unless the loss or a gradient is not finite: that step
        would write NaN or inf into the adapter and Adam's moments for good. Returns whether the
        step was taken."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if not bool(torch.stack([torch.isfinite(loss.detach()), *(torch.isfinite(g).all() for g in grads)]).all()):
            log.warning("step %d: non-finite loss (%s) or gradient; optimizer step skipped", self.step, float(loss.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            return False
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return True

    def update(self, groups: list[Samples], scores: torch.Tensor) -> dict:
        cfg, agent = self.cfg, self.agent
        batch = StepSamples.of(groups, agent.pad_id)
        n = len(batch)
        device = agent.device
        mask, scores = batch.mask.to(device), scores.to(device)
        # One epoch in one minibatch: the first forward *is* the sampling policy, so its detached
        # log-probs are the "old" ones (ratio exactly 1: the plain policy gradient) and no separate
        # no-grad pass runs. (With LoRA dropout that forward has dropout on, as in TRL's GRPO.)
        size = n if cfg.mini_batch_size is None else cfg.mini_batch_size
        one_pass = cfg.ppo_epochs == 1 and size >= n
        if not one_pass:
            with torch.no_grad():
                agent.model.eval()
                old = self.forward(batch, None, POLICY, self.critic)
                targets = self.targets(batch, old, scores, mask)
        agent.model.train()
        # Dr. GRPO's constant normaliser: the minibatch's samples x the longest response allowed.
        drgrpo = self.advantage == "drgrpo"
        stats: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, size):
                idx = order[start:start + size]
                new = self.forward(batch, idx, POLICY, self.critic)
                if one_pass:  # idx is a permutation of all samples: back to step order for the targets
                    old = new.detached(torch.argsort(idx))
                    targets = self.targets(batch, old, scores, mask)
                norm = len(idx) * agent.max_new_tokens if drgrpo else None
                pl, pstats = pm.policy_loss(new.logp, old.logp[idx], targets["advantages"][idx], mask[idx], cfg.cliprange, norm)
                loss, parts = pl, {"policy_loss": pl}
                if self.critic:
                    vl, vstats = pm.value_loss(new.values, old.values[idx], targets["returns"][idx], mask[idx], cfg.cliprange_value)
                    loss = pl + cfg.vf_coef * vl
                    parts.update(value_loss=vl, **pstats, **vstats)
                else:
                    parts.update(pstats)
                if self.kl_in == "loss" and targets["ref_logp"] is not None:
                    kl_loss = pm.aggregate(pm.k3_kl(new.logp, targets["ref_logp"][idx], mask[idx]), mask[idx], norm)
                    loss = loss + self.kl_ctl.value * kl_loss
                    parts["kl_loss"] = kl_loss
                skipped += not self.apply(loss)
                for k, v in parts.items():
                    stats.setdefault(k, []).append(float(v.detach()))
        agent.model.eval()
        row = {k: sum(v) / len(v) for k, v in stats.items()}
        if targets["kl"] is not None:  # no reference pass ran at beta 0: nothing to measure or adapt
            row["kl"] = float(targets["kl"].sum(-1).mean())  # sequence-level KL to the reference
            self.kl_ctl.update(row["kl"], n)
        row.update(kl_coef=self.kl_ctl.value, entropy=float(pm.masked_mean(old.entropy, mask)),  # nats per token
                   degenerate_groups=targets["degenerate"], skipped_updates=skipped)
        if self.critic:
            row["explained_variance"] = pm.explained_variance(old.values, targets["returns"], mask)
        # Samples from another engine (agent.backend=vllm): how far its log-probs are from the
        # trainer's, per token. Large gaps mean the two are not sampling the same policy.
        if batch.logprobs is not None:
            gap = (old.logp - batch.logprobs.to(device)).abs() * mask
            row.update(rollout_logp_gap=float(gap.sum() / mask.sum()), rollout_logp_gap_max=float(gap.max()))
        if agent.rollouts is not None:  # adapter syncs into the engine so far, and their seconds
            row.update(rollout_syncs=agent.rollouts.syncs, rollout_sync_s=agent.rollouts.sync_seconds)
        return row

    @classmethod
    def planned_calls(cls, cfg, task: Task) -> int:
        # every epoch scores each step's groups_per_step x group_size prompts on each training
        # example once; a check follows every update_term-th epoch but the last (anchor_check_matters)
        checks = (cfg.epochs - 1) // cfg.update_term
        per_epoch = samples_per_step(cfg) * len(task.train)
        if cfg.get("queue_rescore"):  # each step's prompts once more on all of train
            per_epoch += math.ceil(len(task.train) / cfg.batch_size) * samples_per_step(cfg) * len(task.train)
        return cfg.epochs * per_epoch + checks * cls.check_calls(cfg, len(task.dev))

    @classmethod
    def planned_samples(cls, cfg, task: Task) -> tuple[int, int]:
        steps = cfg.epochs * math.ceil(len(task.train) / cfg.batch_size)
        checks = (cfg.epochs - 1) // cfg.update_term if cfg.reference == "anchor" else 0  # policy and anchor sample
        return (steps * setting(cfg, "groups_per_step") + 2 * checks,
                steps * samples_per_step(cfg) + 2 * checks * cfg.anchor_eval_prompts)

    @staticmethod
    def check_calls(cfg, n_dev: int) -> int:
        """Target calls one anchor check costs (0 when it scores nothing)."""
        return 2 * cfg.anchor_eval_prompts * n_dev if cfg.reference == "anchor" else 0

    # --- the anchor ------------------------------------------------------------------------
    def anchor_check(self) -> dict:
        cfg = self.cfg
        if cfg.reference == "base":
            return {}
        if cfg.reference == "previous":
            self.agent.copy(POLICY, ANCHOR)
            return {"anchor": "update"}
        query = self.make_query()
        n = cfg.anchor_eval_prompts
        policy = self.agent.sample(query, n, POLICY)
        anchor = self.agent.sample(query, n, ANCHOR)
        acc = self.scorer.score(policy.prompts + anchor.prompts, self.task.dev).accuracy
        return self.decide(acc[:n].mean().item(), acc[n:].mean().item())

    def anchor_check_matters(self) -> bool:
        """After the last epoch a check cannot change the result (the final evaluation reads the
        queue, not the policy), so it would only spend 2·N·|dev| target calls."""
        return not self.finished()

    def anchor_check_calls(self) -> int:
        return self.check_calls(self.cfg, len(self.task.dev))

    def decide(self, policy_acc: float, anchor_acc: float) -> dict:
        """APPO's rule: move the anchor to a clearly better policy, restore a clearly worse one."""
        cfg = self.cfg
        diff = policy_acc - anchor_acc
        if diff > cfg.update_threshold:
            decision = "update"
            self.agent.copy(POLICY, ANCHOR)
        elif diff < -cfg.rollback_threshold:
            decision = "rollback"
            self.agent.copy(ANCHOR, POLICY)
            self.optimizer.state.clear()  # Adam moments belong to the weights just discarded
        else:
            decision = "keep"
        log.info("epoch %d anchor check: policy %.3f anchor %.3f -> %s", self.epoch, policy_acc, anchor_acc, decision)
        return {"anchor": decision, "policy_dev_acc": policy_acc, "anchor_dev_acc": anchor_acc, "diff": diff}

    # --- the loop ----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list]:
        order = list(self.task.train)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        bs = self.cfg.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def total_steps(self) -> int:
        return self.cfg.epochs * len(self.epoch_batches(0))

    def train_step(self) -> dict:
        row = {"epoch": self.epoch, **self.ppo_step(self.epoch_batches(self.epoch)[self.batch_in_epoch])}
        self.batch_in_epoch += 1
        return row

    def after_step(self) -> None:
        if self.batch_in_epoch < len(self.epoch_batches(self.epoch)):
            return
        self.batch_in_epoch = 0
        self.epoch += 1
        # A dev comparison that would cross the budget is skipped: training ends within a step
        # anyway, and the budget must bound every method alike.
        fits = self.budget_calls is None or self.scorer.calls + self.anchor_check_calls() <= self.budget_calls
        if self.epoch % self.cfg.update_term == 0 and fits and self.anchor_check_matters():
            started = time.time()
            decision = self.anchor_check()
            if decision:
                decision.update(step=self.step, epoch=self.epoch - 1, target_calls=self.scorer.calls)
                self.anchor_history.append(decision)
                # time_check: the dev comparison's seconds, which no step's time_step holds
                self.log({**decision, "time_check": time.time() - started})

    def progress_info(self, row: dict) -> str:
        last_dev = next((a["policy_dev_acc"] for a in reversed(self.anchor_history) if "policy_dev_acc" in a), float("nan"))
        fmt = lambda k: f"{float(row.get(k, math.nan)):.3f}"
        return (f"ep {self.epoch} reward {fmt('reward_mean')}/{fmt('reward_max')} "
                f"dev {last_dev:.3f} kl {fmt('kl')}")

    def summary(self) -> dict:
        return {"anchor_decisions": self.anchor_history, "epochs": self.epoch}

    # --- checkpoints -------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "lora": {n: p.detach().clone() for n, p in self.agent.model.named_parameters() if "lora_" in n},
            "value_heads": None if self.agent.value_heads is None else self.agent.value_heads.state_dict(),
            "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value,
            "anchor_history": list(self.anchor_history),
        }

    def load_extra_state(self, state: dict) -> None:
        params = dict(self.agent.model.named_parameters())
        with torch.no_grad():
            for n, t in state["lora"].items():
                params[n].copy_(t)
        if self.agent.value_heads is not None:
            with torch.no_grad():  # copied into the live heads, which decide the device
                for n, p in self.agent.value_heads.named_parameters():
                    p.copy_(state["value_heads"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.anchor_history = list(state["anchor_history"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
