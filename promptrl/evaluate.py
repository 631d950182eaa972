"""`promptrl eval`: score given prompts (or the task's manual and empty prompts) on dev and test."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from promptrl.errors import UserError
from promptrl.faults import crash_point
from promptrl.scoring import Scorer, build_scorer
from promptrl.tasks import Task, load_task
from promptrl.tracking import print_table, run_dir, save_run_info, write_json

log = logging.getLogger(__name__)


def prompts_to_evaluate(cfg: DictConfig, task: Task) -> dict[str, str]:
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise UserError("give either prompt= or prompt_file=, not both")
    if cfg.prompt is not None:
        return {"given": str(cfg.prompt)}
    if cfg.prompt_file is not None:
        return {"given": read_prompt_file(cfg.prompt_file)}
    return {"manual": task.manual_prompt, "empty": ""}


def read_prompt_file(name: str) -> str:
    """The whole file is one prompt (a train run's best_prompt.txt), without surrounding blanks."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"prompt_file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise UserError(f"prompt_file {str(path)!r} is empty; expected the prompt text")
    return text


def metric_label(task: Task) -> str:
    """How tables name the score: "acc" for classification, the answer metric for generation."""
    return task.metric if task.is_generation else "acc"


def evaluate_prompts(scorer: Scorer, task: Task, prompts: list[str]) -> list[dict]:
    """Dev and test accuracy of each prompt; one batched scoring call per split."""
    dev = scorer.score(prompts, task.dev)
    crash_point("between-dev-and-test")
    test = scorer.score(prompts, task.test)
    return [
        {"prompt": p, "dev_accuracy": dev.accuracy[i].item(), "dev_margin": dev.margin[i].item(),
         "test_accuracy": test.accuracy[i].item(), "test_margin": test.margin[i].item()}
        for i, p in enumerate(prompts)
    ]


def run_eval(cfg: DictConfig) -> dict:
    start = time.time()
    out = run_dir()
    save_run_info(out, cfg)
    torch.manual_seed(cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    named = prompts_to_evaluate(cfg, task)
    scorer = build_scorer(cfg.target, task, cfg.cache_dir)
    try:
        rows = evaluate_prompts(scorer, task, list(named.values()))
    finally:
        scorer.close()
    by_name = dict(zip(named, rows))
    first = rows[0]
    results = {
        "task": task.name, "target": cfg.target.name, "algo": "eval", "seed": cfg.seed,
        "prompt": first["prompt"], "dev_accuracy": first["dev_accuracy"], "test_accuracy": first["test_accuracy"],
        "n_dev": len(task.dev), "n_test": len(task.test), "data": task.source,
        "template": task.template, "label_words": task.label_words, "metric": task.metric, "category": task.category,
        "prompts": [{"name": n, **r} for n, r in by_name.items()],
        "target_calls": scorer.calls, "target_tokens": scorer.tokens, "cache_hits": scorer.cache_hits,
        "cache_misses": scorer.cache_misses, "wall_time_s": time.time() - start,
    }
    for name in ("manual", "empty"):
        if name in by_name:
            results[f"{name}_test_accuracy"] = by_name[name]["test_accuracy"]
            results[f"{name}_dev_accuracy"] = by_name[name]["dev_accuracy"]
    write_json(out / "results.json", results)
    print_table(
        f"{task.name} on {cfg.target.name} (dev {len(task.dev)}, test {len(task.test)})",
        ["prompt", "text", f"dev {metric_label(task)}", f"test {metric_label(task)}"]
        + ([] if task.is_generation else ["test margin"]),
        [[n, r["prompt"][:80] or "(empty)", r["dev_accuracy"], r["test_accuracy"]]
         + ([] if task.is_generation else [r["test_margin"]]) for n, r in by_name.items()],
    )
    log.info("results written to %s", out / "results.json")
    return results


def final_evaluation(scorer: Scorer, task: Task, queue: list[dict]) -> dict:
    """Score the queued prompts (and the manual and empty prompts) on dev and test.

    The headline `test_accuracy` belongs to the queued prompt with the best *dev* accuracy (ties:
    dev margin, then training reward), so selection never sees test. `paper_test_accuracy` is the
    paper's protocol, the max over the queue on test, reported under its own name.
    """
    queued = [q["prompt"] for q in queue]
    extra = [task.manual_prompt, ""]
    rows = evaluate_prompts(scorer, task, queued + extra)
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
        out.update(best_prompt=best["prompt"], prompt=best["prompt"], dev_accuracy=best["dev_accuracy"],
                   test_accuracy=best["test_accuracy"],
                   paper_test_accuracy=max(r["test_accuracy"] for r in queue_rows))
    return out
