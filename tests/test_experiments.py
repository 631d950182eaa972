"""The paper-scale experiment configs compose, sweep what the paper ran, and every swept job
composes into a valid task (no GPU, model or data needed)."""

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from promptrl.config import register_configs
from promptrl.tasks import check_task_config

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def composed(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def sweep(cfg) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


@pytest.mark.parametrize("name, jobs, tasks", [
    ("paper_table1", 18, {"sst2_paper", "mrpc", "rte", "qnli", "mnli", "snli"}),
    ("paper_table5", 90, {"sst2_paper", "mrpc", "rte", "qnli", "mnli", "snli"}),
    ("paper_ii", 44 * 3, None),
    ("paper_mmlu", 58 * 2, None),
])
def test_paper_experiments_sweep_the_papers_grid(name, jobs, tasks):
    cfg = composed(f"experiment={name}")
    grid = sweep(cfg)
    assert len(list(itertools.product(*grid.values()))) == jobs
    if tasks:
        assert set(grid["task"]) == tasks
    assert cfg.agent.model == cfg.target.model == "google/gemma-1.1-7b-it"
    assert cfg.target.backend == "vllm" and cfg.target.dtype == "bfloat16"
    for task in grid["task"]:
        job = composed(f"experiment={name}", f"task={task}", *(f"algo={a}" for a in grid.get("algo", [])[:1]))
        check_task_config(job.task)  # raises on anything a run would reject


def test_paper_ii_and_mmlu_use_the_short_schedule():
    assert composed("experiment=paper_ii").algo.epochs == 30
    mmlu = composed("experiment=paper_mmlu", "algo=tte")
    assert mmlu.algo.name == "tte" and mmlu.algo.num_demos == 3 and mmlu.algo.prompts_per_step == 3
    assert set(sweep(composed("experiment=paper_table5"))["algo"]) == {"appo", "ppo", "ppo_original"}
    assert composed("experiment=paper_table5", "algo=ppo_original").algo.reference == "previous"


def test_slurm_launcher_composes_with_a_paper_experiment():
    cfg = composed("experiment=paper_table1", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1


def test_study_arms_differ_only_in_the_optimiser_and_the_natural_template():
    cfg = composed("experiment=study_sst2")
    grid = sweep(cfg)
    assert set(grid["+arm"]) == {"appo", "ppo", "ppo_original", "ape", "appo_natural", "appo_rescore"} and grid["seed"] == ["0", "1", "2"]
    arms = {arm: composed("experiment=study_sst2", f"+arm={arm}") for arm in grid["+arm"]}
    assert {a: (c.algo.name, c.algo.get("reference")) for a, c in arms.items()} == {
        "appo": ("appo", "anchor"), "ppo": ("ppo", "base"), "ppo_original": ("ppo_original", "previous"),
        "ape": ("ape", None), "appo_natural": ("appo", "anchor"), "appo_rescore": ("appo", "anchor")}
    same = lambda c, *keys: OmegaConf.to_container(OmegaConf.masked_copy(c, list(keys)), resolve=True)
    ref = same(arms["appo"], "agent", "target", "checkpoint_every", "budget")
    for arm, c in arms.items():  # one agent (learning rate included), target and budget for every arm
        assert same(c, "agent", "target", "checkpoint_every", "budget") == ref, arm
    rl = {a: c for a, c in arms.items() if a != "ape"}
    for arm, c in rl.items():  # the paper's schedule, identical across the RL arms
        assert (c.algo.epochs, c.algo.update_term, c.algo.learning_rate) == (100, 5, 1e-4), arm
        assert same(c, "algo") == {"algo": {**same(arms["appo"], "algo")["algo"], "name": c.algo.name,
                                            "reference": c.algo.reference, "queue_rescore": arm == "appo_rescore"}}, arm
    assert arms["appo_natural"].task.template == "{prompt}\n\nReview: {input}\nSentiment:"
    assert same(arms["ape"], "task") == same(arms["appo"], "task") != same(arms["appo_natural"], "task")


def test_grpo_arms_are_anchored_and_base_referenced_grpo_on_the_study_setup():
    """conf/arm/grpo.yaml and grpo_base.yaml (not in the study's sweep yet): the study's agent, target,
    task and budget, algo=grpo's settings, and only the reference differs between the two."""
    appo = composed("experiment=study_sst2", "+arm=appo")
    grpo, base = composed("experiment=study_sst2", "+arm=grpo"), composed("experiment=study_sst2", "+arm=grpo_base")
    same = lambda c, *keys: OmegaConf.to_container(OmegaConf.masked_copy(c, list(keys)), resolve=True)
    for c in (grpo, base):
        assert same(c, "agent", "target", "task", "checkpoint_every", "budget") == \
            same(appo, "agent", "target", "task", "checkpoint_every", "budget")
        assert (c.algo.name, c.algo.advantage, c.algo.ppo_epochs, c.algo.mini_batch_size) == ("grpo", "grpo", 1, None)
        assert c.algo.prompts_per_step == c.algo.group_size >= 2
    assert (grpo.algo.reference, base.algo.reference) == ("anchor", "base")
    assert {**same(base, "algo")["algo"], "reference": "anchor"} == same(grpo, "algo")["algo"]
    variant = composed("experiment=study_sst2", "+arm=grpo", "algo.advantage=rloo")
    assert variant.algo.advantage == "rloo" and variant.algo.name == "grpo"
