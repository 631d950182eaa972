"""OPRO (Yang et al., 2024, "Large Language Models as Optimizers").

Each step the agent (untrained, adapters off) reads a meta-prompt holding the best instructions
scored so far, in ascending order of score, followed by a few task exemplars, and proposes
`prompts_per_step` new instructions. Instructions already scored are never scored again. The
score shown to the agent is training accuracy in 0-100 (as in the paper); the queue ranks by
StablePrompt's reward like every other optimiser. The meta-prompt's text is in promptrl/prompts.py.
"""

from __future__ import annotations

import math

from promptrl.agent import BASE
from promptrl.algos.base import PromptOptimizer
from promptrl.errors import UserError
from promptrl.prompts import extract_instruction, opro_exemplar, opro_meta_prompt, opro_shown


def validate(cfg) -> None:
    checks = [
        (cfg.steps >= 1, f"algo.steps={cfg.steps}; expected >= 1"),
        (cfg.prompts_per_step >= 1, f"algo.prompts_per_step={cfg.prompts_per_step}; expected >= 1"),
        (cfg.max_history >= 1, f"algo.max_history={cfg.max_history}; expected >= 1"),
        (cfg.num_demos >= 0, f"algo.num_demos={cfg.num_demos}; expected >= 0"),
        (cfg.eval_examples is None or cfg.eval_examples >= 1, f"algo.eval_examples={cfg.eval_examples}; expected >= 1 or null"),
        (len(cfg.initial_prompts) >= 1, "algo.initial_prompts is empty; expected at least one instruction (\"\" is fine)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


class OPRO(PromptOptimizer):
    validate = staticmethod(validate)
    samples_agent_only = True  # the agent only proposes: agent.backend=chat may serve it

    def __init__(self, cfg, task, scorer, agent, out_dir, **kwargs):
        super().__init__(cfg, task, scorer, agent, out_dir, **kwargs)
        self.eval_set = self.train_subset(cfg.eval_examples)
        self.history: list[dict] = []  # every instruction scored: prompt, score (0-100), reward, step, order
        self.opt_steps = 0  # optimisation steps done (step 0 scores the initial instructions)

    @classmethod
    def planned_calls(cls, cfg, task) -> int:
        per_prompt = len(task.train) if cfg.eval_examples is None else min(cfg.eval_examples, len(task.train))
        return (len(cfg.initial_prompts) + cfg.steps * cfg.prompts_per_step) * per_prompt

    @classmethod
    def planned_samples(cls, cfg, task) -> tuple[int, int]:
        return cfg.steps, cfg.steps * cfg.prompts_per_step

    def finished(self) -> bool:
        return self.opt_steps > self.cfg.steps

    def total_steps(self) -> int:
        return self.cfg.steps + 1

    def longest_query_message(self) -> str:
        """OPRO's longest meta-prompt: `max_history` earlier instructions, each as long as the agent
        may write one (agent.max_new_tokens tokens of filler) with the widest score, and the
        longest exemplars. The history grows as the run goes, so the check at the start is the one
        that can see how far it will grow."""
        filler = " ".join(["the"] * self.agent.max_new_tokens)  # one token a word in the agents' vocabularies
        history = [{"prompt": filler, "score": 100, "order": i} for i in range(self.cfg.max_history)]
        sizes = dict(zip((e.id for e in self.task.train),
                         self.token_counts([opro_exemplar(self.task, e) for e in self.task.train])))
        exemplars = sorted(self.task.train, key=lambda e: sizes[e.id], reverse=True)[:self.cfg.num_demos]
        return opro_meta_prompt(history, self.task, exemplars, self.cfg.max_history)

    def check_longest_query(self) -> None:
        try:
            super().check_longest_query()
        except UserError as e:
            raise UserError(f"OPRO's meta-prompt at its longest (algo.max_history={self.cfg.max_history} earlier "
                            f"instructions of up to agent.max_new_tokens tokens, algo.num_demos={self.cfg.num_demos} "
                            f"exemplars) does not fit: {e}; or a smaller algo.max_history") from None

    def scored(self) -> set[str]:
        return {h["prompt"] for h in self.history}

    def train_step(self) -> dict:
        if self.opt_steps == 0:
            proposals = [str(p) for p in self.cfg.initial_prompts]
            shown = []  # the initial instructions come from the config, not from a meta-prompt
        else:
            shown = [h["prompt"] for h in opro_shown(self.history, self.cfg.max_history)][::-1]  # best first
            exemplars = self.rng.sample(self.task.train, min(self.cfg.num_demos, len(self.task.train)))
            text = opro_meta_prompt(self.history, self.task, exemplars, self.cfg.max_history)
            samples = self.agent.sample(self.agent.query_ids(text, self.cfg.instruction_prefix), self.cfg.prompts_per_step, BASE)
            proposals = [extract_instruction(p, self.cfg.instruction_end) for p in samples.prompts]
        seen = self.scored()
        new = [p for p in dict.fromkeys(proposals) if p not in seen]
        # Lineage (report --html): a new instruction's parents are the instructions its meta-prompt
        # showed, named by their text, best first (the report hangs a node under its first parent);
        # one scored in an earlier step was proposed from earlier ones (logged then), so it names
        # none here. Aligned with `prompts`.
        row = {"opro_step": self.opt_steps, "prompts": proposals, "duplicates": len(proposals) - len(new),
               "prompt_parents": [[] if p in seen else list(shown) for p in proposals]}
        if new:
            rewards, parts = self.score_prompts(new, self.eval_set)
            for p, r, a in zip(new, rewards.tolist(), parts["acc"].tolist()):
                if not math.isfinite(r):
                    continue  # never shown to the agent nor queued
                self.history.append({"prompt": p, "score": round(100 * a), "reward": r, "step": self.step,
                                     "order": len(self.history)})
                self.queue.offer(p, r, self.step)
            row.update(reward_mean=rewards.mean(), reward_max=rewards.max(), acc_mean=parts["acc"].mean(),
                       acc_max=parts["acc"].max(), scored=len(new))
            got = dict(zip(new, zip(rewards.tolist(), parts["acc"].tolist())))
            row.update(prompt_rewards=[got[p][0] if p in got else None for p in proposals],  # aligned with `prompts`
                       prompt_accs=[got[p][1] if p in got else None for p in proposals])
        self.opt_steps += 1
        return row

    def extra_state(self) -> dict:
        return {"history": [dict(h) for h in self.history], "opt_steps": self.opt_steps}

    def load_extra_state(self, state: dict) -> None:
        self.history = [dict(h) for h in state["history"]]
        self.opt_steps = state["opt_steps"]

    def summary(self) -> dict:
        return {"instructions_scored": len(self.history)}
