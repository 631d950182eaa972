"""APE (Zhou et al., 2023, "Large Language Models Are Human-Level Prompt Engineers").

The agent, untrained (adapters off), proposes instructions from demonstrations with the forward
template — the same meta-prompt StablePrompt starts from — and the candidates are scored on the
target. Three phases, each a run of steps under the shared budget:

  propose   `prompts_per_step` candidates per demonstration draw until `num_candidates`;
            with evaluation=full each is scored at once on one fixed training subset
  ucb       evaluation=ucb only: APE's bandit — a random first round, then each round scores
            the candidates (a fraction of them, `ucb_prompts_per_round`) with the highest upper
            confidence bound on a fresh draw of training examples, so promising ones are pulled
            again and again
  resample  iterative APE: paraphrases of the current top candidates, scored like the rest

Every candidate's score is StablePrompt's reward (c_a*acc + c_s*margin) averaged over the
examples it has seen; the queue holds the best, and the final evaluation selects on dev.
"""

from __future__ import annotations

import math

from promptrl.agent import BASE
from promptrl.algos.base import PromptOptimizer
from promptrl.config import APPOConfig
from promptrl.errors import UserError
from promptrl.scoring import reward_range

EVALUATIONS = ("full", "ucb")


def validate(cfg) -> None:
    checks = [
        (cfg.evaluation in EVALUATIONS, f"algo.evaluation={cfg.evaluation!r}; expected one of: {', '.join(EVALUATIONS)}"),
        (cfg.num_candidates is None or cfg.num_candidates >= 1, f"algo.num_candidates={cfg.num_candidates}; expected >= 1 or null"),
        (cfg.prompts_per_step >= 1, f"algo.prompts_per_step={cfg.prompts_per_step}; expected >= 1"),
        (cfg.eval_examples is None or cfg.eval_examples >= 1, f"algo.eval_examples={cfg.eval_examples}; expected >= 1 or null"),
        (cfg.ucb_rounds >= 0, f"algo.ucb_rounds={cfg.ucb_rounds}; expected >= 0"),
        (cfg.ucb_prompts_per_round > 0, f"algo.ucb_prompts_per_round={cfg.ucb_prompts_per_round}; expected a fraction "
         "of the candidates in (0, 1) or a count >= 1"),
        (cfg.ucb_examples_per_round >= 1, f"algo.ucb_examples_per_round={cfg.ucb_examples_per_round}; expected >= 1"),
        (cfg.resample_rounds >= 0, f"algo.resample_rounds={cfg.resample_rounds}; expected >= 0"),
        (cfg.resample_top >= 1, f"algo.resample_top={cfg.resample_top}; expected >= 1"),
        ("{instruction}" in cfg.resample_template, f"algo.resample_template {cfg.resample_template!r} must contain '{{instruction}}'"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def stableprompt_candidates(n_train: int) -> int:
    """How many prompts StablePrompt's default schedule samples on a task with n_train examples."""
    d = APPOConfig()
    return d.epochs * math.ceil(n_train / d.batch_size) * d.prompts_per_step


def ucb_pick(stats: dict[str, dict], k: int, c: float, rng, scale: float = 1.0) -> list[str]:
    """APE's UCB bandit choice (its `UCBBandits.choose`): the first round is a random draw of k
    candidates; after that the k with the highest mean reward + c * scale * sqrt(ln(total
    pulls) / pulls), where an unpulled candidate counts 1e-3 pulls (a large but finite bonus, so
    a clearly good candidate is pulled again while new ones still get their turn). `scale` is the
    reward's range (APE's scores are accuracies in [0, 1], StablePrompt's reward is ~10x)."""
    prompts = list(stats)
    k = min(k, len(prompts))
    pulls = {p: stats[p].get("pulls", 0) for p in prompts}
    if sum(pulls.values()) == 0:
        return rng.sample(prompts, k)
    total = sum(n + 1e-3 for n in pulls.values())

    def bound(p):
        s = stats[p]
        mean = s["sum"] / s["n"] if s["n"] else 0.0
        return mean + c * scale * math.sqrt(math.log(total) / (pulls[p] + 1e-3))

    return sorted(prompts, key=bound, reverse=True)[:k]


def prompts_per_round(setting: float, candidates: int) -> int:
    """APE's num_prompts_per_round: below 1, a fraction of the candidates; else a count."""
    return max(1, round(setting * candidates)) if setting < 1 else int(setting)


class APE(PromptOptimizer):
    validate = staticmethod(validate)
    samples_agent_only = True  # the agent only proposes: agent.backend=chat may serve it
    draws_demo_queries = True

    def __init__(self, cfg, task, scorer, agent, out_dir, **kwargs):
        super().__init__(cfg, task, scorer, agent, out_dir, **kwargs)
        self.num_candidates = cfg.num_candidates or stableprompt_candidates(len(task.train))
        self.eval_set = self.train_subset(cfg.eval_examples)
        # prompt -> {"n": examples scored, "sum": reward x examples, "step": first seen}; insertion = proposal order
        self.stats: dict[str, dict] = {}
        self.proposed = 0
        self.ucb_done = 0
        self.resample_done = 0

    @classmethod
    def planned_calls(cls, cfg, task) -> int:
        n = len(task.train)
        candidates = cfg.num_candidates or stableprompt_candidates(n)
        per_candidate = n if cfg.eval_examples is None else min(cfg.eval_examples, n)
        calls = candidates * per_candidate if cfg.evaluation == "full" else 0
        if cfg.evaluation == "ucb":
            pulls = min(prompts_per_round(cfg.ucb_prompts_per_round, candidates), candidates)
            calls += cfg.ucb_rounds * pulls * min(cfg.ucb_examples_per_round, n)
        return calls + cfg.resample_rounds * min(cfg.resample_top, cfg.queue_size) * per_candidate

    @classmethod
    def planned_samples(cls, cfg, task) -> tuple[int, int]:
        candidates = cfg.num_candidates or stableprompt_candidates(len(task.train))
        paraphrases = cfg.resample_rounds * min(cfg.resample_top, cfg.queue_size)  # one query, one sample each
        return math.ceil(candidates / cfg.prompts_per_step) + paraphrases, candidates + paraphrases

    # --- phases ------------------------------------------------------------------------------
    def phase(self) -> str | None:
        if self.proposed < self.num_candidates:
            return "propose"
        if self.cfg.evaluation == "ucb" and self.ucb_done < self.cfg.ucb_rounds:
            return "ucb"
        if self.resample_done < self.cfg.resample_rounds:
            return "resample"
        return None

    def finished(self) -> bool:
        return self.phase() is None

    def total_steps(self) -> int:
        ucb = self.cfg.ucb_rounds if self.cfg.evaluation == "ucb" else 0
        return math.ceil(self.num_candidates / self.cfg.prompts_per_step) + ucb + self.cfg.resample_rounds

    def train_step(self) -> dict:
        phase = self.phase()
        if phase == "propose":
            n = min(self.cfg.prompts_per_step, self.num_candidates - self.proposed)
            query = self.demo_query(self.cfg.meta_prompt, self.cfg.instruction_prefix)
            prompts = self.agent.sample(query, n, BASE).prompts
            self.proposed += n
            row = self.add_candidates(prompts, score=self.cfg.evaluation == "full")
        elif phase == "ucb":
            # UCB's bonus assumes rewards in [0, 1]; generation rewards already are
            scale = reward_range(self.task, self.cfg.reward_acc_coef, self.cfg.reward_margin_coef, self.scorer.answers)
            picked = ucb_pick(self.stats, prompts_per_round(self.cfg.ucb_prompts_per_round, len(self.stats)),
                              self.cfg.ucb_exploration, self.rng, scale)
            examples = self.rng.sample(self.task.train, min(self.cfg.ucb_examples_per_round, len(self.task.train)))
            row = self.score_candidates(picked, examples)
            row.update(prompts=picked, prompt_rewards=row.pop("new_rewards"), prompt_accs=row.pop("new_accs"))
            self.ucb_done += 1
        else:
            prompts = [self.paraphrase(p) for p in self.queue.prompts[:self.cfg.resample_top]]
            row = self.add_candidates(prompts, score=True)
            self.resample_done += 1
        self.refresh_queue()
        return {"phase": phase, "candidates": len(self.stats), **row}

    # --- candidates ----------------------------------------------------------------------------
    def add_candidates(self, prompts: list[str], score: bool) -> dict:
        """Record new proposals; identical texts are scored once (the target is deterministic)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.stats]
        for p in new:
            self.stats[p] = {"n": 0, "sum": 0.0, "step": self.step}
        row = {"prompts": prompts, "duplicates": len(prompts) - len(new)}
        if score and new:
            row.update(self.score_candidates(new, self.eval_set))
            got = dict(zip(new, zip(row.pop("new_rewards"), row.pop("new_accs"))))
            # per prompt, aligned with `prompts`; None for a repeat, scored once already
            row.update(prompt_rewards=[got[p][0] if p in got else None for p in prompts],
                       prompt_accs=[got[p][1] if p in got else None for p in prompts])
        return row

    def score_candidates(self, prompts: list[str], examples) -> dict:
        rewards, parts = self.score_prompts(prompts, examples)
        for p, r in zip(prompts, rewards.tolist()):
            if math.isfinite(r):  # a NaN score leaves the candidate unscored rather than poisoning its mean
                self.stats[p]["pulls"] = self.stats[p].get("pulls", 0) + 1
                self.stats[p]["n"] += len(examples)
                self.stats[p]["sum"] += r * len(examples)
        return {"reward_mean": rewards.mean(), "reward_max": rewards.max(), "acc_mean": parts["acc"].mean(),
                "acc_max": parts["acc"].max(), "scored": len(prompts), "new_rewards": rewards.tolist(),
                "new_accs": parts["acc"].tolist()}

    def paraphrase(self, prompt: str) -> str:
        user = self.cfg.resample_template.format(instruction=prompt)
        return self.agent.sample(self.agent.query_ids(user, self.cfg.resample_prefix), 1, BASE).prompts[0]

    def refresh_queue(self) -> None:
        """The queue is the top candidates by mean reward (a UCB round can lower a mean)."""
        self.queue.items = []
        for p, s in self.stats.items():
            if s["n"]:
                self.queue.offer(p, s["sum"] / s["n"], s["step"])

    # --- checkpoints ---------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"stats": {p: dict(s) for p, s in self.stats.items()}, "proposed": self.proposed,
                "ucb_done": self.ucb_done, "resample_done": self.resample_done}

    def load_extra_state(self, state: dict) -> None:
        self.stats = {p: dict(s) for p, s in state["stats"].items()}
        self.proposed, self.ucb_done, self.resample_done = state["proposed"], state["ucb_done"], state["resample_done"]

    def summary(self) -> dict:
        return {"candidates": len(self.stats), "proposed": self.proposed, "num_candidates": self.num_candidates}
