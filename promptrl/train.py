"""`promptrl train`: build task, target scorer and agent, run the chosen optimiser, evaluate."""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import ExitStack

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from promptrl import progress
from promptrl.algos.base import resume_state
from promptrl.chat import usage_report
from promptrl.engines import open_models
from promptrl.errors import UserError
from promptrl.evaluate import metric_label
from promptrl.rundir import atomic_write_text, open_run, write_json
from promptrl.tasks import load_task
from promptrl.tracking import Tracker, package_versions, print_table, source_commit, wandb_identity

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_run_settings(cfg) -> None:
    if cfg.budget.target_calls is not None and cfg.budget.target_calls <= 0:
        raise UserError(f"budget.target_calls={cfg.budget.target_calls}; expected a positive number or null")
    usd = cfg.budget.get("usd")
    if usd is not None and not usd > 0:
        raise UserError(f"budget.usd={usd}; expected a positive amount (US dollars) or null")
    check_money_budget(cfg)
    if cfg.checkpoint_every < 0:
        raise UserError(f"checkpoint_every={cfg.checkpoint_every}; expected >= 0 (0 = never)")


def check_money_budget(cfg) -> None:
    """budget.usd needs every model the run pays for priced: a chat target, and a chat agent if any."""
    sides = [s for s in (cfg.target, cfg.agent) if s.get("backend") == "chat"]
    if cfg.budget.get("usd") is not None and not (sides and all(
            s.chat.price_input is not None and s.chat.price_output is not None for s in sides)):
        raise UserError(f"budget.usd={cfg.budget.usd} needs a price for every model the run pays for: set "
                        "target.chat.price_input and price_output (and agent.chat's, with agent.backend=chat); "
                        "local models cost no money")


def trainer_class(cfg):
    try:
        trainer_cls = get_class(cfg.algo._target_)
    except (ImportError, AttributeError):
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported; expected a class such as "
                        "promptrl.algos.appo.APPOTrainer") from None
    trainer_cls.check_config(cfg.algo)
    return trainer_cls


def run_train(cfg: DictConfig) -> dict:
    start = time.time()
    with ExitStack() as run:
        launch = open_run(cfg)  # locks the run directory until this block ends
        run.callback(launch.lock.release)
        out, cfg = launch.out, launch.cfg
        if launch.state == "finished":
            log.info("%s already holds this run's results.json; skipped (a new run directory runs it again)", out)
            return json.loads((out / "results.json").read_text())
        resumed = launch.state == "resume"
        if resumed:  # read before any model loads: an unreadable checkpoint stops here, nothing changed
            state = resume_state(out)
            log.info("resuming run %s with its saved config", out)
        # Logged on every launch: a run resumed across sessions may finish on other code than it began.
        log.info("promptrl code: %s", source_commit() or f"installed package {package_versions().get('promptrl')}")
        check_run_settings(cfg)
        progress.set_enabled(cfg.logger.progress)
        trainer_cls = trainer_class(cfg)
        seed_everything(cfg.seed)
        task = load_task(cfg.task, cfg.seed, cfg.cache_dir)
        with ExitStack() as models:  # every engine is closed when training and evaluation end, or fail
            scorer, agent = open_models(cfg, task, models, needs_agent=trainer_cls.needs_agent)
            trainer = trainer_cls(cfg.algo, task, scorer, agent, out, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                                  budget_calls=cfg.budget.target_calls, budget_usd=cfg.budget.get("usd"),
                                  progress=cfg.logger.progress)
            if resumed:
                trainer.load_state_dict(state)
            earlier_sessions = trainer.elapsed  # training time of the sessions before a resume
            config = OmegaConf.to_container(cfg, resolve=True)
            tracker = trainer.tracker = Tracker(out, cfg.logger, config, resume_step=trainer.step - 1 if resumed else None,
                                                identity=wandb_identity(config))
            run.push(tracker.close_on_exit)  # wandb ends with the run: failed on an error
            if not resumed:
                seed_everything(cfg.seed)  # sampling starts from the same RNG state for every run of this seed
            trainer.run()
            if cfg.checkpoint_every:
                trainer.save()  # the finished state, so a kill during final evaluation loses no training
            calls_before_eval = scorer.calls
            with trainer.ledger.timed("evaluation"):
                final = trainer.evaluate_final()
        results = {
            "task": task.name, "target": cfg.target.name, "agent": cfg.agent.name, "algo": cfg.algo.name,
            "reference": cfg.algo.get("reference"), "seed": cfg.seed, "data": task.source, "template": task.template,
            "label_words": task.label_words, "metric": task.metric, "category": task.category, **final, **trainer.summary(),
            "steps": trainer.step, "budget_target_calls": cfg.budget.target_calls, "target_calls": calls_before_eval,
            "target_calls_with_eval": scorer.calls, "target_tokens": scorer.tokens,
            "cache_hits": scorer.cache_hits, "cache_misses": scorer.cache_misses, **usage_report(scorer, agent),
            "train_time_s": trainer.elapsed, "wall_time_s": earlier_sessions + (time.time() - start),
            "stopped_by": trainer.stopped_by, "cost": trainer.cost(),
        }
        write_json(out / "results.json", results)
        if final.get("best_prompt") is not None:  # TTE writes one prompt per input instead (tte_*_prompts.jsonl)
            # the prompt as `promptrl predict prompt_file=` reads it back
            atomic_write_text(out / "best_prompt.txt", final["best_prompt"] + "\n")
        tracker.summary(results)
        if tracker.wandb is not None:  # the prompts and the final queue as tables, the run's page as an artifact
            from promptrl.report_html import log_to_wandb

            try:
                log_to_wandb(out, tracker.wandb)
            except Exception as e:  # a finished run's results are on disk: a wandb problem only warns
                log.warning("could not log the prompts tables to wandb (%s); results.json is written", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    print_table(
        f"{cfg.algo.name} on {task.name}: target {cfg.target.name}, agent {cfg.agent.name}, "
        f"{calls_before_eval} target calls",
        ["prompt", f"dev {metric_label(task)}", f"test {metric_label(task)}"],
        [[r["prompt"][:100] or "(empty)", r["dev_accuracy"], r["test_accuracy"]] for r in final["queue"]]
        + ([[f"({final['protocol']})", final["dev_accuracy"], final["test_accuracy"]]] if "protocol" in final else [])
        + [["(manual)", final["manual_dev_accuracy"], final["manual_test_accuracy"]],
           ["(empty)", final["empty_dev_accuracy"], final["empty_test_accuracy"]]],
    )
    chosen = final.get("protocol") or f"best prompt (dev-selected): {final.get('best_prompt')!r}"
    log.info("%s test %.4f; results in %s", chosen, final.get("test_accuracy", float("nan")), out / "results.json")
    if final.get("best_prompt") is not None:
        log.info("best prompt in %s (promptrl predict prompt_file=%s input_file=...)", out / "best_prompt.txt", out / "best_prompt.txt")
    return results
