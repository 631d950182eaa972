"""StablePrompt's training loop: PPO on the agent's prompts, KL-anchored (APPO) or not (PPO).

One step: draw k demonstrations from train, build the meta-prompt query, sample P instructions
from the policy, score them on a train batch (one batched target call), reward = c_a*acc +
c_s*margin, then PPO-update the policy adapter and value head with a per-token KL penalty
against the reference `algo.reference` names:

  anchor    APPO: the anchor adapter, moved by the dev comparison every update_term epochs
  base      RLHF-style PPO: the base model with adapters off
  previous  original PPO: the anchor, copied from the policy every update_term epochs
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch

from promptrl.agent import ANCHOR, BASE, POLICY, Agent, Samples
from promptrl.algos import ppo_math as pm
from promptrl.algos.base import PromptOptimizer
from promptrl.errors import UserError
from promptrl.faults import crash_point
from promptrl.scoring import Scorer
from promptrl.tasks import Task

log = logging.getLogger(__name__)
REFERENCES = ("anchor", "base", "previous")


def validate(cfg) -> None:
    checks = [
        (cfg.reference in REFERENCES, f"algo.reference={cfg.reference!r}; expected one of: {', '.join(REFERENCES)}"),
        (cfg.update_term >= 1, f"algo.update_term={cfg.update_term}; expected an integer >= 1 (epochs between anchor checks)"),
        (cfg.update_threshold >= 0, f"algo.update_threshold={cfg.update_threshold}; expected >= 0"),
        (cfg.rollback_threshold >= 0, f"algo.rollback_threshold={cfg.rollback_threshold}; expected >= 0"),
        (cfg.prompts_per_step >= 2, f"algo.prompts_per_step={cfg.prompts_per_step}; expected >= 2 (advantages need a spread)"),
        (cfg.epochs >= 1, f"algo.epochs={cfg.epochs}; expected >= 1"),
        (cfg.batch_size >= 1, f"algo.batch_size={cfg.batch_size}; expected >= 1"),
        (cfg.num_demos >= 1, f"algo.num_demos={cfg.num_demos}; expected >= 1"),
        (cfg.ppo_epochs >= 1, f"algo.ppo_epochs={cfg.ppo_epochs}; expected >= 1"),
        (1 <= cfg.mini_batch_size, f"algo.mini_batch_size={cfg.mini_batch_size}; expected >= 1"),
        (cfg.learning_rate > 0, f"algo.learning_rate={cfg.learning_rate}; expected > 0"),
        (cfg.anchor_eval_prompts >= 1, f"algo.anchor_eval_prompts={cfg.anchor_eval_prompts}; expected >= 1"),
        (cfg.queue_size >= 1, f"algo.queue_size={cfg.queue_size}; expected >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


class APPOTrainer(PromptOptimizer):
    validate = staticmethod(validate)

    def __init__(self, cfg, task: Task, scorer: Scorer, agent: Agent, out_dir: Path | None, **kwargs):
        super().__init__(cfg, task, scorer, agent, out_dir, **kwargs)
        self.optimizer = torch.optim.Adam(agent.trainable_parameters(), lr=cfg.learning_rate)
        self.kl_ctl = pm.AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon, cfg.adaptive_kl)
        self.epoch = 0  # epochs finished
        self.batch_in_epoch = 0  # steps done inside the current epoch
        self.anchor_history: list[dict] = []

    # --- one PPO step ----------------------------------------------------------------------
    def make_query(self) -> torch.Tensor:
        return self.demo_query(self.cfg.meta_prompt, self.cfg.instruction_prefix)

    def ppo_step(self, batch, query: torch.Tensor | None = None) -> dict:
        t0 = time.time()
        query = self.make_query() if query is None else query
        samples = self.agent.sample(query, self.cfg.prompts_per_step, POLICY)
        t1 = time.time()
        rewards, parts = self.score_prompts(samples.prompts, batch)
        t2 = time.time()
        row = {"prompts": samples.prompts, "reward_mean": rewards.mean(), "reward_max": rewards.max(),
               "acc_mean": parts["acc"].mean(), "acc_max": parts["acc"].max(), "margin_mean": parts["margin"].mean(),
               "response_len": samples.mask.sum(-1).mean()}
        if not torch.isfinite(rewards).all():
            log.warning("step %d: non-finite reward %s; step skipped", self.step, rewards.tolist())
            return {**row, "skipped": "non-finite reward"}
        for prompt, r in zip(samples.prompts, self.admission_rewards(samples.prompts, rewards).tolist()):
            self.queue.offer(prompt, r, self.step)
        crash_point("mid-step")
        row.update(self.update(samples, rewards))
        row.update(time_generate=t1 - t0, time_score=t2 - t1, time_update=time.time() - t2)
        return row

    def admission_rewards(self, prompts: list[str], batch_rewards: torch.Tensor) -> torch.Tensor:
        """The rewards prompts enter the queue with; the PPO update always uses the batch's."""
        if not self.cfg.queue_rescore:
            return batch_rewards
        return self.score_prompts(prompts, self.task.train)[0]

    def reference_adapter(self) -> str:
        return BASE if self.cfg.reference == "base" else ANCHOR

    def update(self, samples: Samples, scores: torch.Tensor) -> dict:
        cfg, agent = self.cfg, self.agent
        query, responses, mask = samples.query, samples.responses, samples.mask
        with torch.no_grad():
            agent.model.eval()
            old_logp, old_values = agent.evaluate_actions(query, responses, POLICY)
            entropy = agent.last_entropy
            ref_logp, _ = agent.evaluate_actions(query, responses, self.reference_adapter(), with_values=False)
            mask = mask.to(old_logp.device)
            mean_entropy = float(pm.masked_mean(entropy, mask))  # nats per token of the sampling policy
            rewards, kl = pm.kl_penalized_rewards(scores.to(old_logp.device), old_logp, ref_logp, mask, self.kl_ctl.value)
            advantages, returns = pm.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = pm.masked_whiten(advantages, mask)
            # Samples from another engine (agent.backend=vllm): how far its log-probs are from the
            # trainer's, per token. Large gaps mean the two are not sampling the same policy.
            gap = (old_logp - samples.logprobs.to(old_logp.device)).abs() * mask if samples.logprobs is not None else None
        agent.model.train()
        stats: dict[str, list[float]] = {}
        n = responses.shape[0]
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, cfg.mini_batch_size):
                idx = order[start:start + cfg.mini_batch_size]
                logp, values = agent.evaluate_actions(query, responses[idx], POLICY)
                pl, pstats = pm.policy_loss(logp, old_logp[idx], advantages[idx], mask[idx], cfg.cliprange)
                vl, vstats = pm.value_loss(values, old_values[idx], returns[idx], mask[idx], cfg.cliprange_value)
                loss = pl + cfg.vf_coef * vl
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(agent.trainable_parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in {"policy_loss": pl, "value_loss": vl, **pstats, **vstats}.items():
                    stats.setdefault(k, []).append(float(v.detach()))
        agent.model.eval()
        mean_kl = float(kl.sum(-1).mean())  # sequence-level KL to the reference
        self.kl_ctl.update(mean_kl, n)
        if gap is not None:
            stats.update(rollout_logp_gap=[float(gap.sum() / mask.sum())], rollout_logp_gap_max=[float(gap.max())])
        if agent.rollouts is not None:  # adapter syncs into the engine so far, and their seconds
            stats.update(rollout_syncs=[agent.rollouts.syncs], rollout_sync_s=[agent.rollouts.sync_seconds])
        return {**{k: sum(v) / len(v) for k, v in stats.items()}, "kl": mean_kl, "kl_coef": self.kl_ctl.value,
                "entropy": mean_entropy,
                "explained_variance": pm.explained_variance(old_values, returns, mask)}

    @classmethod
    def planned_calls(cls, cfg, task: Task) -> int:
        # every epoch scores prompts_per_step prompts on each training example once; a check
        # follows every update_term-th epoch but the last (anchor_check_matters)
        checks = (cfg.epochs - 1) // cfg.update_term
        per_epoch = cfg.prompts_per_step * len(task.train)
        if cfg.get("queue_rescore"):  # each step's prompts once more on all of train
            per_epoch += math.ceil(len(task.train) / cfg.batch_size) * cfg.prompts_per_step * len(task.train)
        return cfg.epochs * per_epoch + checks * cls.check_calls(cfg, len(task.dev))

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
            decision = self.anchor_check()
            if decision:
                decision.update(step=self.step, epoch=self.epoch - 1, target_calls=self.scorer.calls)
                self.anchor_history.append(decision)
                self.log(decision)

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
            "value_heads": self.agent.value_heads.state_dict(),
            "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value,
            "anchor_history": list(self.anchor_history),
        }

    def load_extra_state(self, state: dict) -> None:
        params = dict(self.agent.model.named_parameters())
        with torch.no_grad():
            for n, t in state["lora"].items():
                params[n].copy_(t)
        with torch.no_grad():  # copied into the live heads, which decide the device
            for n, p in self.agent.value_heads.named_parameters():
                p.copy_(state["value_heads"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.anchor_history = list(state["anchor_history"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
