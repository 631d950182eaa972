"""`promptrl train`: build task, target scorer and agent, run the chosen optimiser, evaluate."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from promptrl.agent import Agent
from promptrl.algos.appo import uses_critic
from promptrl.errors import UserError
from promptrl.evaluate import metric_label
from promptrl.interrupts import Interrupted
from promptrl.models import load_model, resolve_device
from promptrl.rollouts import BACKENDS as ROLLOUT_BACKENDS
from promptrl.rollouts import VLLMRollouts, check_gpu_memory, engine_lora_rank, shares_engine, start_agent_engine
from promptrl.scoring import build_scorer
from promptrl.tasks import load_task
from promptrl.tracking import (
    Tracker,
    atomic_write_text,
    package_versions,
    print_table,
    redact,
    run_dir,
    save_run_info,
    source_commit,
    wandb_identity,
    write_json,
)

log = logging.getLogger(__name__)


def resolve_resume(resume: str, outputs: Path = Path("outputs")) -> Path:
    """`latest` is the newest run directory under outputs/ that holds a checkpoint."""
    if resume == "latest":
        runs = sorted((p.parent.parent for p in outputs.glob("**/checkpoints/ckpt-*.pt")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"resume=latest: no run with a checkpoint under {outputs}/")
        return runs[-1]
    path = Path(resume).expanduser()
    if not (path / "checkpoints").is_dir():
        raise UserError(f"resume={resume!r} is not a run directory with checkpoints/; expected a path or 'latest'")
    return path


IGNORED_WHEN_RELAUNCHED = ("resume", "logger")  # how a run is watched, not what it computes


def config_differences(saved: dict, current: dict, prefix: str = "", one_sided: list | None = None) -> list[str]:
    """The dotted keys at which two resolved configs differ. A key that only one of them has is
    a setting an earlier or later promptrl added or removed, not a different run (a study resumed
    across code versions would otherwise be refused for every new option): it goes to `one_sided`."""
    diffs = []
    for k in sorted(set(saved) | set(current)):
        if (k in saved) != (k in current):
            if one_sided is not None:
                one_sided.append(f"{prefix}{k}")
            continue
        a, b = saved[k], current[k]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{k}.", one_sided)
        elif a != b:
            diffs.append(f"{prefix}{k}")
    return diffs


def earlier_launch(out: Path, cfg) -> str:
    """What an earlier launch of this job left in its run directory: "finished" (results.json),
    "interrupted" (checkpoints, no results: killed, or failed after a checkpoint) or "none".
    This is what makes a sweep resumable: launched again over the same hydra.sweep.dir, each job
    finds its own directory (hydra.sweep.subdir) and skips, resumes or starts. A directory whose
    work came from a different config is an error, not overwritten: the sweep's order changed."""
    has_results = (out / "results.json").is_file()
    has_checkpoints = any((out / "checkpoints").glob("ckpt-*.pt"))
    if (out / "failed.json").is_file():  # run it again; the record of the failure is kept aside
        os.replace(out / "failed.json", out / "failed-earlier.json")
    if not (has_results or has_checkpoints):
        return "none"
    saved_path = out / "config_resolved.yaml"
    if not saved_path.is_file():
        raise UserError(f"{out} holds results or checkpoints but no config_resolved.yaml; use a new run directory")
    saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    current = redact(OmegaConf.to_container(cfg, resolve=True))
    for key in IGNORED_WHEN_RELAUNCHED:
        saved.pop(key, None)
        current.pop(key, None)
    one_sided: list[str] = []
    diffs = config_differences(saved, current, one_sided=one_sided)
    if one_sided:
        log.warning("%s was launched by a promptrl with other settings (%s only in one of the two configs); "
                    "treated as the same run", out, ", ".join(one_sided[:5]) + (" …" if len(one_sided) > 5 else ""))
    if diffs:
        shown = ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise UserError(f"{out} holds a run of a different config (differs at {shown}); launch with the same "
                        "overrides in the same order, or with a new hydra.sweep.dir / hydra.run.dir")
    return "finished" if has_results else "interrupted"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_agent_backend(cfg) -> None:
    if cfg.agent.backend not in ROLLOUT_BACKENDS:
        raise UserError(f"agent.backend={cfg.agent.backend!r}; expected one of: {', '.join(ROLLOUT_BACKENDS)}")
    if cfg.agent.backend == "vllm":
        engine_lora_rank(cfg.agent.lora_r)  # before any model loads: a rank vLLM cannot serve is an error
        check_gpu_memory(cfg, (resolve_device(cfg.agent.device), resolve_device(cfg.target.device)))


def build_agent(cfg, seed: int, engine=None) -> Agent:
    """The agent; with agent.backend=vllm its samples come from `engine` (one shared with the
    target) or from an engine of its own."""
    check_agent_backend(cfg)
    base, tok = load_model(cfg.agent, cfg.cache_dir)
    seed_everything(seed)  # LoRA and value-head initialisation
    a = cfg.agent
    agent = Agent(base, tok, lora_r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                  target_modules=a.target_modules, max_new_tokens=a.max_new_tokens, no_chat_template=a.no_chat_template,
                  value_heads=uses_critic(cfg.algo))
    if a.backend == "vllm":
        agent.rollouts = VLLMRollouts(engine if engine is not None else start_agent_engine(cfg), agent)
    return agent


def run_train(cfg: DictConfig) -> dict:
    start = time.time()
    out = run_dir()
    if cfg.resume:
        out = resolve_resume(cfg.resume)
        saved = OmegaConf.load(out / "config_resolved.yaml")
        log.info("resuming run %s with its saved config", out)
        cfg = OmegaConf.merge(saved, {"resume": str(out)})
    else:
        earlier = earlier_launch(out, cfg)
        if earlier == "finished":
            log.info("%s already holds this run's results.json; skipped (a new run directory runs it again)", out)
            return json.loads((out / "results.json").read_text())
        if earlier == "interrupted":
            log.info("%s holds this run's checkpoints from an earlier launch; resuming from them", out)
            cfg = OmegaConf.merge(cfg, {"resume": str(out)})
        else:
            save_run_info(out, cfg)
    # Logged on every launch: a run resumed across sessions may finish on other code than it began.
    log.info("promptrl code: %s", source_commit() or f"installed package {package_versions().get('promptrl')}")
    if cfg.budget.target_calls is not None and cfg.budget.target_calls <= 0:
        raise UserError(f"budget.target_calls={cfg.budget.target_calls}; expected a positive number or null")
    if cfg.checkpoint_every < 0:
        raise UserError(f"checkpoint_every={cfg.checkpoint_every}; expected >= 0 (0 = never)")
    try:
        trainer_cls = get_class(cfg.algo._target_)
    except (ImportError, AttributeError):
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported; expected a class such as "
                        "promptrl.algos.appo.APPOTrainer") from None
    trainer_cls.check_config(cfg.algo)
    seed_everything(cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    needs_agent = trainer_cls.needs_agent
    if needs_agent:
        check_agent_backend(cfg)
    # One vLLM engine for agent and target when they are one base model: started here, so the
    # scorer and the agent's rollouts get the same engine.
    engine = start_agent_engine(cfg) if needs_agent and shares_engine(cfg) else None
    scorer = build_scorer(cfg.target, task, cfg.cache_dir, engine=engine)
    agent = None
    try:
        agent = build_agent(cfg, cfg.seed, engine=engine) if needs_agent else None
        trainer = trainer_cls(cfg.algo, task, scorer, agent, out, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                              budget_calls=cfg.budget.target_calls, progress=cfg.logger.progress)
        resumed = bool(cfg.resume) and trainer.try_resume()
        earlier_sessions = trainer.elapsed  # training time of the sessions before a resume
        config = OmegaConf.to_container(cfg, resolve=True)
        trainer.tracker = Tracker(out, cfg.logger, config, resume_step=trainer.step - 1 if resumed else None,
                                  identity=wandb_identity(config))
        if not resumed:
            seed_everything(cfg.seed)  # sampling starts from the same RNG state for every run of this seed
        try:
            trainer.run()
        except Interrupted:
            trainer.tracker.close()  # the rows so far are in metrics.jsonl; wandb's run ends cleanly
            raise
        if cfg.checkpoint_every:
            trainer.save()  # the finished state, so a kill during final evaluation loses no training
        calls_before_eval = scorer.calls
        final = trainer.evaluate_final()
    finally:
        scorer.close()  # a vLLM engine is a process of its own; the next sweep job needs the memory
        if agent is not None:
            agent.close()
    results = {
        "task": task.name, "target": cfg.target.name, "agent": cfg.agent.name, "algo": cfg.algo.name,
        "reference": cfg.algo.get("reference"), "seed": cfg.seed, "data": task.source, "template": task.template,
        "label_words": task.label_words, "metric": task.metric, "category": task.category, **final, **trainer.summary(), "steps": trainer.step,
        "budget_target_calls": cfg.budget.target_calls, "target_calls": calls_before_eval, "target_calls_with_eval": scorer.calls, "target_tokens": scorer.tokens,
        "cache_hits": scorer.cache_hits, "cache_misses": scorer.cache_misses,
        "train_time_s": trainer.elapsed, "wall_time_s": earlier_sessions + (time.time() - start),
    }
    write_json(out / "results.json", results)
    if final.get("best_prompt") is not None:  # TTE writes one prompt per input instead (tte_*_prompts.jsonl)
        # the prompt as `promptrl predict prompt_file=` reads it back
        atomic_write_text(out / "best_prompt.txt", final["best_prompt"] + "\n")
    trainer.tracker.summary(results)
    trainer.tracker.close()
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
