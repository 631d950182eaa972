"""What every prompt optimiser shares: the step loop, the budget, the queue, metrics, checkpoints.

An optimiser (APPO/PPO, APE, OPRO, the manual prompt) implements `train_step()` — one unit of
work that ends with the prompts it scored offered to the queue — plus `finished()` and, if it
keeps state of its own, `extra_state()` / `load_extra_state()`. This class runs the steps under
the target-call budget, logs one metrics row per step, checkpoints every `checkpoint_every`
steps and resumes from the newest readable checkpoint. The final evaluation of the queue is the
same function for everyone (`promptrl.evaluate.final_evaluation`), so results compare.

Budget rule: the budget is checked before each step, so a run overshoots it by at most one
step's target calls. Calls made by the final evaluation are not counted.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from pathlib import Path

import torch

from promptrl import progress as progress_bars
from promptrl.agent import Agent
from promptrl.checkpoint import load_latest_checkpoint, save_checkpoint
from promptrl.errors import UserError
from promptrl.evaluate import final_evaluation
from promptrl.faults import crash_point
from promptrl.interrupts import Interrupted, StopRequests
from promptrl.ledger import Ledger
from promptrl.prompt_queue import PromptQueue
from promptrl.prompts import format_demos, user_message
from promptrl.scoring import Scorer, reward
from promptrl.tasks import Example, Task
from promptrl.tracking import Tracker


def check_common(cfg) -> None:
    if cfg.queue_size < 1:
        raise UserError(f"algo.queue_size={cfg.queue_size}; expected an integer >= 1")
    if not 0 < cfg.baseline_alpha < 1:
        raise UserError(f"algo.baseline_alpha={cfg.baseline_alpha}; expected a significance level in (0, 1), e.g. 0.05")
    for key in ("reward_acc_coef", "reward_margin_coef"):
        if not math.isfinite(cfg[key]):
            raise UserError(f"algo.{key}={cfg[key]}; expected a finite number")


def resume_state(out_dir: Path) -> dict:
    """The newest readable checkpoint of a run directory. A resume was asked for (or a relaunched
    job found checkpoints), so finding none that loads is an error, never a silent restart."""
    directory = out_dir / "checkpoints"
    state = load_latest_checkpoint(directory)  # raises when there are checkpoints but none loads
    if state is None:
        raise UserError(f"cannot resume: {directory} holds no checkpoint; nothing was changed "
                        "(launch without resume= to start a new run)")
    return state


def restore_cuda_rng(states: list[torch.Tensor] | None) -> None:
    """The CUDA generators' states, for the devices this machine has: a run checkpointed on 8
    GPUs may resume on 1 (and one checkpointed on a CPU has none to restore)."""
    if states is None or not torch.cuda.is_available():
        return
    for device, rng in enumerate(states[:torch.cuda.device_count()]):
        torch.cuda.set_rng_state(rng, device)


class PromptOptimizer:
    needs_agent = True  # False: train.py does not load an agent model at all

    validate = None  # a subclass's own checks: a function cfg -> None that raises UserError

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise a UserError for a bad algo config; called before any model is loaded."""
        check_common(cfg)
        if cls.validate is not None:
            cls.validate(cfg)

    def __init__(self, cfg, task: Task, scorer: Scorer, agent: Agent | None, out_dir: Path | None,
                 tracker: Tracker | None = None, seed: int = 0, checkpoint_every: int = 0,
                 budget_calls: int | None = None, budget_usd: float | None = None, progress: bool = False):
        self.check_config(cfg)
        self.cfg, self.task, self.scorer, self.agent = cfg, task, scorer, agent
        # one ledger for the run: the scorer's, shared with the agent (promptrl/ledger.py); a
        # stand-in scorer without one (tests) gets a fresh one
        self.ledger = getattr(scorer, "ledger", None) or Ledger()
        if agent is not None:
            agent.ledger = self.ledger
        self.budget_usd = budget_usd
        self.last_step_usd = 0.0  # what the last step cost: the estimate of the next one's cost
        self.stopped_by: str | None = None  # "budget.usd" when the money budget ended training
        self.out_dir = out_dir
        self.tracker = tracker
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.budget_calls = budget_calls
        self.progress = progress  # training's bar on the console
        self.bar = progress_bars.Bar()  # training's progress row while run() runs
        self.rng = random.Random(seed)  # demonstrations, batches, subsets
        self.queue = PromptQueue(cfg.queue_size)
        self.step = 0  # steps done
        self.elapsed = 0.0  # wall time of earlier sessions of this run
        self.check_longest_query()

    # --- the plan, before anything runs (`promptrl check`) -------------------------------------
    @classmethod
    def planned_calls(cls, cfg, task: Task) -> int:
        """Target calls the schedule asks for in training, counted as `Scorer.calls` counts them
        (prompt x example, cached or not), before any budget: an upper bound where duplicate
        proposals are scored once."""
        raise NotImplementedError

    @classmethod
    def planned_samples(cls, cfg, task: Task) -> tuple[int, int] | None:
        """(queries, instructions) the schedule asks the agent for, before any budget (--plan's
        agent tokens); None where the schedule does not say (GEPA, input-specific prompts)."""
        return None

    @classmethod
    def final_calls(cls, cfg, task: Task) -> int:
        """At most this many target calls in the final evaluation: the queue, the manual and the
        empty prompt, each on dev and test."""
        return (cfg.queue_size + 2) * (len(task.dev) + len(task.test))

    # --- what a subclass provides ------------------------------------------------------------
    def train_step(self) -> dict:
        raise NotImplementedError

    def finished(self) -> bool:
        raise NotImplementedError

    def total_steps(self) -> int | None:
        """For the progress bar; None when only the budget decides."""
        return None

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def summary(self) -> dict:
        """Algorithm-specific fields for results.json."""
        return {}

    def evaluate_final(self) -> dict:
        """The run's final numbers on dev and test (promptrl.evaluate.final_evaluation: the queue,
        the manual and the empty prompt); TTE overrides it with one prompt per input."""
        return final_evaluation(self.scorer, self.task, self.queue.items, self.cfg.keep_baseline, self.cfg.baseline_alpha)

    def progress_info(self, row: dict) -> str:
        fmt = lambda k: f"{float(row.get(k, math.nan)):.3f}"
        return f"reward {fmt('reward_mean')}/{fmt('reward_max')} best {self.best_reward():.3f}"

    # --- shared helpers ------------------------------------------------------------------------
    def score_prompts(self, prompts: list[str], examples: list[Example]) -> tuple[torch.Tensor, dict]:
        """[P] rewards (promptrl.scoring.reward) of the prompts on the examples, one target call,
        and the accuracy and margin they were made of."""
        scores = self.scorer.score(prompts, examples)
        rewards = reward(scores, self.cfg.reward_acc_coef, self.cfg.reward_margin_coef)
        return rewards, {"acc": scores.accuracy, "margin": scores.margin}

    def demo_query(self, meta_prompt: str, prefix: str) -> torch.Tensor:
        """The forward-generation query: meta-prompt + k demonstrations drawn from train (the
        paper's §3.1). Not from dev: dev is the anchor-check and selection set, and a prompt that
        echoed dev demonstrations would get them right there for free."""
        demos = self.rng.sample(self.task.train, min(self.cfg.num_demos, len(self.task.train)))
        return self.agent.query_ids(user_message(meta_prompt, format_demos(self.task, demos)), prefix)

    # True: queries are `demo_query`'s, the meta-prompt and k demonstrations drawn from train
    # (OPRO and TTE override longest_query_message instead).
    draws_demo_queries = False

    def longest_query_message(self) -> str | None:
        """The agent's user message with the longest demonstrations it can be shown (None: this
        optimiser draws none)."""
        if not self.draws_demo_queries:
            return None
        sizes = self.demo_sizes()
        demos = sorted(self.task.train, key=lambda e: sizes[e.id], reverse=True)[:self.cfg.num_demos]
        return user_message(self.cfg.meta_prompt, format_demos(self.task, demos))

    def check_longest_query(self) -> None:
        """A query past the agent's context is refused (Agent.query_ids); check the longest the
        draws can make now, so a long example stops the run before its first step rather than
        whenever a draw first picks it. Draws nothing from the run's rng. A hosted proposer
        (no tokenizer, no context known here) is not checked."""
        if getattr(self.agent, "tokenizer", None) is None:
            return
        message = self.longest_query_message()
        if message is not None:
            self.agent.query_ids(message, self.cfg.instruction_prefix)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's length in the agent's tokens (one batched call)."""
        return [len(ids) for ids in self.agent.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def demo_sizes(self) -> dict[str, int]:
        """Each training example's demonstration, in the agent's tokens, by example id."""
        train = self.task.train
        return dict(zip((e.id for e in train), self.token_counts([format_demos(self.task, [e]) for e in train])))

    def train_subset(self, n: int | None) -> list[Example]:
        """A fixed, seeded subset of n training examples (all of them for None), in id order."""
        n = len(self.task.train) if n is None else min(n, len(self.task.train))
        return sorted(self.rng.sample(self.task.train, n), key=lambda e: e.id)

    def budget_spent(self) -> bool:
        if self.budget_calls is not None and self.scorer.calls >= self.budget_calls:
            return True
        if self.budget_usd is not None:
            # the next step is expected to cost what the last one did (the first one runs: nothing
            # is known about it yet); training stops before a step that would pass the budget
            spent = self.cost()["usd"] or 0.0
            if spent + self.last_step_usd > self.budget_usd:
                self.stopped_by = "budget.usd"
                return True
        return False

    def cost(self) -> dict:
        """The run's spend so far (promptrl/ledger.py): the `cost` block of rows and results."""
        return self.ledger.cost(self.scorer, self.agent)

    def best_reward(self) -> float:
        return self.queue.items[0]["reward"] if self.queue.items else math.nan

    def log(self, row: dict) -> None:
        if self.tracker is not None:
            self.tracker.log(row)
        if self.budget_calls is not None:  # one long step (GEPA's whole search) moves the bar too
            self.show_progress()

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        start = time.time()
        with self.progress_bar() as bar, StopRequests() as stop:
            self.bar = bar
            while not self.finished() and not self.budget_spent():
                step_start, usd_before = time.time(), self.cost()["usd"]
                row = {"step": self.step, **self.train_step()}
                row.update(target_calls=self.scorer.calls, target_tokens=self.scorer.tokens,
                           cache_hits=self.scorer.cache_hits, cache_misses=self.scorer.cache_misses,
                           best_reward=self.best_reward(), time_step=time.time() - step_start)
                row.update(self.cost())  # cumulative: a report lines runs up at equal cost in any unit
                if row["usd"] is not None:
                    self.last_step_usd = row["usd"] - usd_before
                self.log(row)
                self.after_step()
                self.step += 1
                self.show_progress(info=self.progress_info(row))
                periodic = self.checkpoint_every and self.step % self.checkpoint_every == 0
                if periodic or (stop.signum and self.checkpoint_every):
                    self.elapsed += time.time() - start
                    start = time.time()
                    self.save()
                crash_point("after-step")
                if stop.signum:
                    self.elapsed += time.time() - start
                    raise Interrupted(stop.signum, self.stopped_message(stop.signum))
        self.bar = progress_bars.Bar()
        self.elapsed += time.time() - start

    def progress_bar(self):
        """Training's bar: in target calls when a budget is set (then it, not the schedule, is
        what ends the run: APE under a 64-call budget shows 64, not its 700 candidates), else in
        the schedule's steps."""
        name = f"{self.cfg.name} {self.task.name}"
        if not self.progress:
            return contextlib.nullcontext(progress_bars.Bar())
        if self.budget_calls is not None:
            return progress_bars.bar(f"{name} (target calls)", total=self.budget_calls,
                                     completed=min(self.scorer.calls, self.budget_calls))
        return progress_bars.bar(f"{name} (steps)", total=self.total_steps(), completed=self.step)

    def show_progress(self, info: str | None = None) -> None:
        done = min(self.scorer.calls, self.budget_calls) if self.budget_calls is not None else self.step
        self.bar.update(completed=done, info=info)

    def stopped_message(self, signum: int) -> str:
        total = self.total_steps()
        where = f"after step {self.step}" + (f" of {total}" if total else "")
        name = signal.Signals(signum).name
        if not self.checkpoint_every:
            return f"stopped by {name} {where}; no checkpoint written (checkpoint_every=0), so it cannot be resumed"
        return (f"stopped by {name} {where}; checkpoint written to {self.out_dir / 'checkpoints'}; launch the "
                "same command again (or resume=<run dir>) to continue from there")

    def after_step(self) -> None:
        """Hook between a step's metrics row and its checkpoint (APPO's anchor check)."""

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "elapsed": self.elapsed, "queue": self.queue.state_dict(),
            "rng_python": self.rng.getstate(), "rng_torch": torch.get_rng_state(),
            # sampling on a GPU draws from the CUDA generator; without it a resumed run would diverge
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "target_calls": self.scorer.calls, "target_tokens": self.scorer.tokens,
            "cache_hits": self.scorer.cache_hits, "cache_misses": self.scorer.cache_misses,
            "ledger": self.ledger.state_dict(self.scorer, self.agent), "last_step_usd": self.last_step_usd,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.queue.load_state_dict(state["queue"])
        self.rng.setstate(state["rng_python"])
        torch.set_rng_state(state["rng_torch"])
        restore_cuda_rng(state.get("rng_cuda"))
        self.scorer.calls, self.scorer.tokens = state["target_calls"], state["target_tokens"]
        # the whole run's cache counts (a repeated step's scorings are hits); older checkpoints: this session's
        self.scorer.cache_hits = state.get("cache_hits", self.scorer.cache_hits)
        self.scorer.cache_misses = state.get("cache_misses", self.scorer.cache_misses)
        if "ledger" in state:  # checkpoints written before the ledger existed start it at zero
            self.ledger.load_state_dict(state["ledger"], self.scorer, self.agent)
            self.last_step_usd = state["last_step_usd"]
        self.load_extra_state(state["extra"])

    def save(self) -> None:
        save_checkpoint(self.out_dir / "checkpoints", self.step, self.state_dict())

    def resume(self) -> None:
        """Continue from the newest readable checkpoint (see `resume_state`)."""
        self.load_state_dict(resume_state(self.out_dir))
