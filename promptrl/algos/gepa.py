"""GEPA (Agrawal et al., 2025, "GEPA: Reflective Prompt Evolution Can Outperform Reinforcement
Learning"), driven by the `gepa` library itself — promptrl does not reimplement it.

`gepa.optimize` runs its own loop: it samples a minibatch of training examples, has the
reflection LM read the current instruction with the target's answers and feedback on them, and
proposes a new instruction; a child that beats its parent on the minibatch is scored on the
Pareto (validation) set and joins the pool. promptrl supplies what GEPA asks of a user:

  the adapter      `PromptAdapter.evaluate` scores a candidate through promptrl's `Scorer` (one
                   batched target call; per-example scores are StablePrompt's reward of that
                   example alone, so GEPA's mean over its Pareto set is the reward every
                   optimiser ranks by) and `make_reflective_dataset` turns the target's answers
                   and the gold labels into feedback text;
  reflection_lm    the agent, untrained (adapters off), as for APE and OPRO;
  the budget       `max_metric_calls` = budget.target_calls (or algo.max_metric_calls), and a
                   stopper on the scorer's own count: both count prompt x example scorings.

GEPA's Pareto set is drawn from train, as its trainset is; dev stays the final selection set.
Every candidate GEPA scores on its Pareto set is offered to the queue with that mean reward, and
the final evaluation is everyone's. A metrics row is written per GEPA iteration; it lists the
candidates scored on the Pareto set since the previous row (`prompts`, `prompt_ids`: GEPA's
candidate index, `prompt_parents`: its parents' indices, `prompt_rewards`: its mean reward on the
Pareto set), the lineage `promptrl report --html` draws.

Resume: GEPA's loop cannot be entered mid-way from promptrl's checkpoints, so an interrupted
GEPA run starts its search again; a finished one (checkpointed after training) is not redone.
"""

from __future__ import annotations

import logging
import math
import time

from promptrl.agent import BASE
from promptrl.algos.base import PromptOptimizer
from promptrl.errors import UserError
from promptrl.scoring import ClassificationScores, GenerationScores, reward, reward_range
from promptrl.tasks import Example, Task

COMPONENT = "instruction"  # the one text component GEPA evolves
SELECTIONS = ("pareto", "current_best", "epsilon_greedy", "top_k_pareto")


def validate(cfg) -> None:
    checks = [
        (cfg.max_metric_calls is None or cfg.max_metric_calls >= 1, f"algo.max_metric_calls={cfg.max_metric_calls}; expected >= 1 or null"),
        (cfg.reflection_minibatch_size >= 1, f"algo.reflection_minibatch_size={cfg.reflection_minibatch_size}; expected >= 1"),
        (cfg.val_examples is None or cfg.val_examples >= 1, f"algo.val_examples={cfg.val_examples}; expected >= 1 or null"),
        (cfg.candidate_selection_strategy in SELECTIONS,
         f"algo.candidate_selection_strategy={cfg.candidate_selection_strategy!r}; expected one of: {', '.join(SELECTIONS)}"),
        (cfg.max_merge_invocations >= 0, f"algo.max_merge_invocations={cfg.max_merge_invocations}; expected >= 0"),
        (cfg.reflection_prompt_template is None
         or all(p in cfg.reflection_prompt_template for p in ("<curr_param>", "<side_info>")),
         "algo.reflection_prompt_template must contain GEPA's placeholders <curr_param> and <side_info> (or be null)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def import_gepa():
    try:
        import gepa
    except ImportError:
        raise UserError('algo=gepa needs the gepa library; install it with pip install "promptrl[gepa]"') from None
    return gepa


def per_example(scores: ClassificationScores | GenerationScores, acc_coef: float, margin_coef: float) -> list[float]:
    """Each example's reward for the one prompt scored: `reward` of that example alone, so their
    mean is the prompt's reward on the batch (the reward is a mean over examples)."""
    n = scores.correct.shape[-1]
    if isinstance(scores, GenerationScores):
        return [reward(GenerationScores(scores.values[:, j:j + 1]), acc_coef, margin_coef).item() for j in range(n)]
    return [reward(ClassificationScores(scores.label_logprobs[:, j:j + 1], scores.labels[j:j + 1], scores.answers),
                   acc_coef, margin_coef).item() for j in range(n)]


class PromptAdapter:
    """GEPA's `GEPAAdapter` for one instruction scored by promptrl's target scorer."""

    propose_new_texts = None  # GEPA's own reflective proposer, with our reflection LM

    def __init__(self, task: Task, scorer, acc_coef: float, margin_coef: float):
        self.task, self.scorer = task, scorer
        self.acc_coef, self.margin_coef = acc_coef, margin_coef
        self.names = task.label_names or [w.strip() for w in task.label_words]

    def evaluate(self, batch: list[Example], candidate: dict[str, str], capture_traces: bool = False):
        from gepa import EvaluationBatch

        scores = self.scorer.score([candidate[COMPONENT]], batch)  # one batched call, counted by the scorer
        values = per_example(scores, self.acc_coef, self.margin_coef)
        traces = [self.trace(scores, j, ex, v) for j, (ex, v) in enumerate(zip(batch, values))]
        values = [v if math.isfinite(v) else 0.0 for v in values]  # GEPA asks for a fallback score, not NaN
        return EvaluationBatch(outputs=[t["answer"] for t in traces], scores=values,
                               trajectories=traces if capture_traces else None)

    def trace(self, scores, j: int, ex: Example, value: float) -> dict:
        if isinstance(scores, GenerationScores):
            metric = scores.correct[0, j].item()
            return {"input": ex.text, "answer": f"(an answer scoring {self.task.metric} {metric:.2f})", "score": value,
                    "feedback": f"The answer scored {self.task.metric} {metric:.2f}; a correct answer is: {ex.answers[0]!r}."}
        probs = scores.probs[0, j]
        pred = int(scores.predictions[0, j])
        if pred < 0:  # a written answer (target.chat.scoring=generate) that named no label
            return {"input": ex.text, "answer": "(no label)", "score": value,
                    "feedback": f"Wrong: the answer named none of the labels {', '.join(map(repr, self.names))}; "
                                f"the correct answer is {self.names[ex.label]!r}."}
        answer = self.names[pred]
        if pred == ex.label:
            feedback = f"Correct: the answer is {answer!r} (probability {probs[pred]:.2f} among the labels)."
        else:
            feedback = (f"Wrong: the assistant answered {answer!r} but the correct answer is {self.names[ex.label]!r} "
                        f"(probability {probs[ex.label]:.2f} among the labels {', '.join(map(repr, self.names))}).")
        return {"input": ex.text, "answer": answer, "score": value, "feedback": feedback}

    def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
        records = [{"Inputs": t["input"], "Generated Outputs": t["answer"], "Feedback": t["feedback"]}
                   for t in eval_batch.trajectories]
        return {name: records for name in components_to_update}


class GEPA(PromptOptimizer):
    validate = staticmethod(validate)
    samples_agent_only = True  # the agent only proposes: agent.backend=chat may serve it

    def __init__(self, cfg, task, scorer, agent, out_dir, **kwargs):
        super().__init__(cfg, task, scorer, agent, out_dir, **kwargs)
        budgets = [b for b in (cfg.max_metric_calls, self.budget_calls) if b is not None]
        if not budgets:
            raise UserError("algo=gepa needs a budget: set budget.target_calls (or algo.max_metric_calls)")
        self.max_metric_calls = min(budgets)
        self.done = False
        self.metric_calls = 0  # GEPA's own count, beside the scorer's
        self.candidates = 0
        self.reflections = 0

    @classmethod
    def planned_calls(cls, cfg, task) -> int | None:
        """GEPA's budget; None: budget.target_calls decides."""
        return cfg.max_metric_calls

    def finished(self) -> bool:
        return self.done

    def reflect(self, prompt: str) -> str:
        """GEPA's reflection LM: the untrained agent's answer, from the prefix (a ``` block) on."""
        self.reflections += 1
        query = self.agent.query_ids(prompt, self.cfg.reflection_prefix)
        return self.cfg.reflection_prefix + self.agent.sample(query, 1, BASE).prompts[0]

    def run(self) -> None:
        gepa = import_gepa()
        if self.done:  # resumed after a finished search
            return
        start = time.time()
        val = self.train_subset(self.cfg.val_examples)
        seed_prompt = self.cfg.seed_prompt if self.cfg.seed_prompt is not None else self.task.manual_prompt
        rows = Rows(self)
        result = gepa.optimize(
            seed_candidate={COMPONENT: seed_prompt}, trainset=list(self.task.train), valset=val,
            adapter=PromptAdapter(self.task, self.scorer, self.cfg.reward_acc_coef, self.cfg.reward_margin_coef),
            reflection_lm=self.reflect, reflection_prompt_template=self.cfg.reflection_prompt_template,
            candidate_selection_strategy=self.cfg.candidate_selection_strategy,
            reflection_minibatch_size=self.cfg.reflection_minibatch_size,
            perfect_score=reward_range(self.task, self.cfg.reward_acc_coef, self.cfg.reward_margin_coef, self.scorer.answers),
            skip_perfect_score=self.cfg.skip_perfect_score,
            use_merge=self.cfg.use_merge, max_merge_invocations=self.cfg.max_merge_invocations,
            max_metric_calls=self.max_metric_calls, stop_callbacks=[lambda state: self.budget_spent()],
            logger=GEPALogger(), callbacks=[rows], seed=self.seed, track_best_outputs=False,
        )
        rows.flush()
        self.metric_calls = result.total_metric_calls
        self.candidates = len(result.candidates)
        self.done = True
        self.elapsed += time.time() - start

    # --- checkpoints (a finished search only; see the module docstring) -------------------------
    def extra_state(self) -> dict:
        return {"done": self.done, "metric_calls": self.metric_calls, "candidates": self.candidates,
                "reflections": self.reflections}

    def load_extra_state(self, state: dict) -> None:
        self.done, self.metric_calls = state["done"], state["metric_calls"]
        self.candidates, self.reflections = state["candidates"], state["reflections"]

    def summary(self) -> dict:
        return {"gepa_metric_calls": self.metric_calls, "candidates": self.candidates, "reflections": self.reflections,
                "gepa_max_metric_calls": self.max_metric_calls}


class Rows:
    """GEPA callbacks: every candidate scored on the Pareto set goes to the queue, and every
    iteration is a metrics row in promptrl's format.

    Lineage is logged as the search runs, not read from the final GEPAResult: GEPA's
    `on_valset_evaluated` event names each candidate's index (`candidate_idx`) and its parents'
    (`parent_ids`: none for the seed, two for a merge) when it joins the pool, so the candidates
    are kept until the iteration's row is written and go into it. A run stopped mid-search still
    has the lineage of every candidate it logged."""

    def __init__(self, trainer: GEPA):
        self.t = trainer
        self.started = time.time()
        self.pending: list[tuple[str, str, list[str], float]] = []  # (id, prompt, parent ids, reward) not yet in a row

    def on_valset_evaluated(self, event) -> None:
        prompt, score = event["candidate"][COMPONENT], float(event["average_score"])
        self.t.queue.offer(prompt, score, self.t.step)
        parents = [str(p) for p in event.get("parent_ids") or [] if p is not None]
        self.pending.append((str(event["candidate_idx"]), prompt, parents, score))

    def on_iteration_end(self, event) -> None:
        state = event["state"]
        self.write({"gepa_iteration": event["iteration"], "accepted": bool(event["proposal_accepted"]),
                    "candidates": len(state.program_candidates), "gepa_metric_calls": state.total_num_evals,
                    "reward_max": max(state.program_full_scores_val_set)})

    def flush(self) -> None:
        """After the search: candidates no iteration's row took (the seed alone, when the budget
        ended the search before its first iteration) get a row of their own."""
        if self.pending:
            self.write({"reward_max": max(score for *_, score in self.pending)})

    def write(self, fields: dict) -> None:
        t, scorer = self.t, self.t.scorer
        row = {"step": t.step, **fields}
        if self.pending:
            ids, prompts, parents, rewards = (list(column) for column in zip(*self.pending))
            row.update(prompts=prompts, prompt_ids=ids, prompt_parents=parents, prompt_rewards=rewards)
            self.pending = []
        row.update(target_calls=scorer.calls, target_tokens=scorer.tokens, cache_hits=scorer.cache_hits,
                   cache_misses=scorer.cache_misses, best_reward=t.best_reward(), time_step=time.time() - self.started)
        self.started = time.time()  # a row's time_step is all since the last row: the seed's scoring is in the first
        t.log(row)
        t.step += 1


class GEPALogger:
    """GEPA's progress lines (proposals, scores) go to the run's log file, not the console: a
    library logger, which conf/hydra/job_logging/promptrl.yaml routes to the file only."""

    def log(self, message: str) -> None:
        logging.getLogger("gepa").info("%s", message)
