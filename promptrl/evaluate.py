"""`promptrl eval`: score given prompts (or the task's manual and empty prompts) on dev and test."""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig

from promptrl import progress
from promptrl.errors import UserError
from promptrl.faults import crash_point
from promptrl.jsonl import read_text
from promptrl.rundir import open_run, write_json
from promptrl.scoring import ClassificationScores, GenerationScores, Scorer
from promptrl.tasks import Example, Task, load_task
from promptrl.tracking import print_table

log = logging.getLogger(__name__)


def prompts_to_evaluate(cfg: DictConfig, task: Task) -> dict[str, str]:
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise UserError("give either prompt= or prompt_file=, not both")
    if cfg.prompt is not None:
        return {"given": str(cfg.prompt)}
    if cfg.prompt_file is not None:
        return {"given": read_prompt_file(cfg.prompt_file)}
    return {"manual": task.manual_prompt, "empty": ""}


def read_prompt_file(name: str, allow_empty: bool = False) -> str:
    """The whole file is one prompt (a train run's best_prompt.txt), without surrounding blanks.
    An empty file is the empty prompt where a run can hand it back (algo.keep_baseline)."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"prompt_file {str(path)!r} does not exist")
    text = read_text(path, "prompt_file").strip()
    if not text and not allow_empty:
        raise UserError(f"prompt_file {str(path)!r} is empty; expected the prompt text")
    if not text:
        log.warning("prompt_file %s is empty: the template alone, with no instruction", path)
    return text


def metric_label(task: Task) -> str:
    """How tables name the score: "acc" for classification, the answer metric for generation."""
    return task.metric if task.is_generation else "acc"


def score_with_progress(scorer: Scorer, prompts: list[str], examples: list[Example], what: str):
    """`scorer.score(prompts, examples)` in about twenty pieces of the examples, each still one
    batched call over every prompt, so a bar can say how far a long evaluation is (and its ETA);
    every score is the one a single call would give (each is computed per prompt and input)."""
    parts = []
    with progress.bar(what, total=len(prompts) * len(examples)) as b:
        for piece in progress.chunks(examples):
            parts.append(scorer.score(prompts, piece))
            b.advance(len(prompts) * len(piece))
    if isinstance(parts[0], GenerationScores):
        return GenerationScores(values=torch.cat([p.values for p in parts], dim=1))
    return ClassificationScores(label_logprobs=torch.cat([p.label_logprobs for p in parts], dim=1),
                                labels=torch.cat([p.labels for p in parts]))


def evaluate_prompts(scorer: Scorer, task: Task, prompts: list[str], keep_dev_correct: bool = False,
                     what: str = "evaluation") -> list[dict]:
    """Dev and test accuracy of each prompt, batched over the prompts. With keep_dev_correct,
    each row also holds its per-example dev scores (for paired comparisons)."""
    n = f"{len(prompts)} prompt{'s' * (len(prompts) != 1)}"
    dev = score_with_progress(scorer, prompts, task.dev, f"{what}: dev, {n}")
    crash_point("between-dev-and-test")
    test = score_with_progress(scorer, prompts, task.test, f"{what}: test, {n}")
    rows = [
        {"prompt": p, "dev_accuracy": dev.accuracy[i].item(), "dev_margin": dev.margin[i].item(),
         "test_accuracy": test.accuracy[i].item(), "test_margin": test.margin[i].item()}
        for i, p in enumerate(prompts)
    ]
    if keep_dev_correct:
        for i, row in enumerate(rows):
            row["dev_correct"] = dev.correct[i].tolist()
    return rows


def paired_sign_test(a: list[float], b: list[float]) -> tuple[int, int, float]:
    """How often a beats b and b beats a on the same examples, and the one-sided exact sign-test
    p-value of "a is better" (McNemar's exact test when the scores are 0/1). Ties carry no
    information about which is better and are left out, as the test prescribes."""
    from scipy.stats import binomtest

    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    p = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    return wins, losses, float(p)


def guard_against_baselines(best: dict, baselines: dict[str, dict], alpha: float) -> dict:
    """Is the dev-selected prompt significantly better on dev than the better of the manual and
    the empty prompt? Dev holds a few dozen examples, so a lead of a few points is often noise,
    and a prompt that won on dev can lose to no prompt at all on test (issue 19's natural-template run)."""
    name, base = max(baselines.items(), key=lambda kv: (kv[1]["dev_accuracy"], kv[1]["dev_margin"]))
    wins, losses, p = paired_sign_test(best["dev_correct"], base["dev_correct"])
    return {"baseline": name, "dev_diff": best["dev_accuracy"] - base["dev_accuracy"], "wins": wins,
            "losses": losses, "p_value": p, "significant": p < alpha,
            "baseline_dev_accuracy": base["dev_accuracy"], "baseline_test_accuracy": base["test_accuracy"],
            "baseline_prompt": base["prompt"]}


def run_eval(cfg: DictConfig) -> dict:
    from promptrl.engines import open_models

    start = time.time()
    with ExitStack() as run:
        launch = open_run(cfg)  # an eval sweep launched again skips its finished jobs
        run.callback(launch.lock.release)
        out = launch.out
        if launch.state == "finished":
            log.info("%s already holds this evaluation's results.json; skipped (a new run directory runs it again)", out)
            return json.loads((out / "results.json").read_text())
        progress.set_enabled(cfg.logger.progress)
        torch.manual_seed(cfg.seed)
        task = load_task(cfg.task, cfg.seed, cfg.cache_dir)
        named = prompts_to_evaluate(cfg, task)
        with ExitStack() as models:
            scorer, _ = open_models(cfg, task, models)
            with scorer.ledger.timed("evaluation"):
                rows = evaluate_prompts(scorer, task, list(named.values()))
        results = eval_results(cfg, task, named, rows, scorer, time.time() - start)
        write_json(out / "results.json", results)
    by_name = dict(zip(named, rows))
    print_table(
        f"{task.name} on {cfg.target.name} (dev {len(task.dev)}, test {len(task.test)})",
        ["prompt", "text", f"dev {metric_label(task)}", f"test {metric_label(task)}"]
        + ([] if task.is_generation else ["test margin"]),
        [[n, r["prompt"][:80] or "(empty)", r["dev_accuracy"], r["test_accuracy"]]
         + ([] if task.is_generation else [r["test_margin"]]) for n, r in by_name.items()],
    )
    log.info("results written to %s", out / "results.json")
    return results


def eval_results(cfg: DictConfig, task: Task, named: dict[str, str], rows: list[dict], scorer: Scorer, wall_s: float) -> dict:
    by_name = dict(zip(named, rows))
    first = rows[0]
    results = {
        "task": task.name, "target": cfg.target.name, "algo": "eval", "seed": cfg.seed,
        "prompt": first["prompt"], "dev_accuracy": first["dev_accuracy"], "test_accuracy": first["test_accuracy"],
        "n_dev": len(task.dev), "n_test": len(task.test), "data": task.source,
        "template": task.template, "label_words": task.label_words, "metric": task.metric, "category": task.category,
        "prompts": [{"name": n, **r} for n, r in by_name.items()],
        "target_calls": scorer.calls, "target_tokens": scorer.tokens, "cache_hits": scorer.cache_hits,
        "cache_misses": scorer.cache_misses, **scorer.report(), "cost": scorer.ledger.cost(scorer, None), "wall_time_s": wall_s,
    }
    for name in ("manual", "empty"):
        if name in by_name:
            results[f"{name}_test_accuracy"] = by_name[name]["test_accuracy"]
            results[f"{name}_dev_accuracy"] = by_name[name]["dev_accuracy"]
    return results


def final_evaluation(scorer: Scorer, task: Task, queue: list[dict], keep_baseline: bool = False,
                     baseline_alpha: float = 0.05) -> dict:
    """Score the queued prompts (and the manual and empty prompts) on dev and test.

    The headline `test_accuracy` belongs to the queued prompt with the best *dev* accuracy (ties:
    dev margin, then training reward), so selection never sees test. `paper_test_accuracy` is the
    paper's protocol, the max over the queue on test, reported under its own name.

    The selected prompt is then compared on dev, example by example, with the better of the
    manual and the empty prompt (`guard`: a one-sided sign test). A lead that is not significant
    at `baseline_alpha` is always said (a warning and results.json); with keep_baseline the run
    then hands back the baseline instead. `guard_test_accuracy` is the test accuracy under that
    rule whichever is chosen, so both rules are measured on every run.
    """
    queued = [q["prompt"] for q in queue]
    extra = [task.manual_prompt, ""]
    rows = evaluate_prompts(scorer, task, queued + extra, keep_dev_correct=True, what="final evaluation")
    for row, q in zip(rows, queue):
        row["train_reward"] = q.get("reward")
        row["step"] = q.get("step")
    queue_rows, (manual, empty) = rows[:len(queued)], rows[len(queued):]
    out = {
        "manual_test_accuracy": manual["test_accuracy"], "manual_dev_accuracy": manual["dev_accuracy"],
        "empty_test_accuracy": empty["test_accuracy"], "empty_dev_accuracy": empty["dev_accuracy"],
        "queue": queue_rows, "n_dev": len(task.dev), "n_test": len(task.test),
    }
    if queue_rows:
        best = max(queue_rows, key=lambda r: (r["dev_accuracy"], r["dev_margin"], r["train_reward"] or 0.0))
        guard = guard_against_baselines(best, {"manual": manual, "empty": empty}, baseline_alpha)
        chosen_test = best["test_accuracy"] if guard["significant"] else guard["baseline_test_accuracy"]
        out.update(best_prompt=best["prompt"], prompt=best["prompt"], dev_accuracy=best["dev_accuracy"],
                   test_accuracy=best["test_accuracy"],
                   paper_test_accuracy=max(r["test_accuracy"] for r in queue_rows),
                   guard=guard, guard_test_accuracy=chosen_test)
        if not guard["significant"]:
            verdict = (f"the dev-selected prompt is not significantly better on dev than the {guard['baseline']} prompt "
                       f"({guard['dev_diff']:+.3f}, {guard['wins']} wins / {guard['losses']} losses, "
                       f"sign test p={guard['p_value']:.3f} >= {baseline_alpha})")
            if keep_baseline:
                log.warning("%s; keeping the %s prompt (algo.keep_baseline=true)", verdict, guard["baseline"])
                out.update(best_prompt=guard["baseline_prompt"], prompt=guard["baseline_prompt"],
                           dev_accuracy=guard["baseline_dev_accuracy"], test_accuracy=chosen_test,
                           kept_baseline=guard["baseline"])
            else:
                log.warning("%s; it is handed back anyway (algo.keep_baseline=true would keep the baseline)", verdict)
    for row in rows:
        row.pop("dev_correct")  # per-example lists are for the test above, not for results.json
    return out
