"""The config tree: composed values the defaults lists decide, a comment on every schema field,
and the generated files (task configs, reference configs) equal to what their scripts write."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
import logging.config
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import promptrl.config as schema
from promptrl.cli import CONF_DIR, route_transformers_logs
from promptrl.preflight import preflight

REPO = Path(__file__).resolve().parent.parent
RL_ALGOS = ["appo", "ppo", "ppo_original", "tte", "grpo"]
AGENTS = sorted(p.stem for p in (REPO / "conf" / "agent").glob("*.yaml"))
schema.register_configs()


def composed(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="test"):
        return compose("train", overrides=list(overrides))


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- composed values --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    ((), 10), (("experiment=cpu_demo",), 4), (("experiment=compare_sst2",), 4), (("experiment=paper_table1",), 20),
    (("experiment=cpu_demo", "checkpoint_every=7"), 7),
])
def test_experiments_set_top_level_keys(overrides, expected):
    assert composed(*overrides).checkpoint_every == expected


@pytest.mark.parametrize("agent", AGENTS)
def test_every_rl_algorithm_trains_an_agent_at_the_agents_rate(agent):
    """The PPO family at the agent's rl_learning_rate; GRPO, one Adam step per batch where they
    take four, at four times it (conf/algo/grpo.yaml's pilot) — for every agent, not a fixed number."""
    rates = {algo: composed(f"agent={agent}", f"algo={algo}").algo.learning_rate for algo in RL_ALGOS}
    rate = composed(f"agent={agent}").agent.rl_learning_rate
    assert rates.pop("grpo") == pytest.approx(4 * rate)
    assert set(rates.values()) == {rate}, rates
    assert composed(f"agent={agent}", "algo=grpo", "algo.learning_rate=3e-5").algo.learning_rate == 3e-5


def test_the_embedded_agent_trains_faster_than_the_papers_and_an_override_wins():
    assert composed("algo=ppo_original").algo.learning_rate == 1e-4
    assert composed("agent=gemma-7b", "algo=ppo_original").algo.learning_rate == 1e-5
    assert composed("algo=ppo_original", "algo.learning_rate=3e-5").algo.learning_rate == 3e-5


def test_glob_sweeps_compose_or_fail_in_one_line():
    assert preflight(CONF_DIR, "train", ["-m", "task=glob(mmlu_a*)"]) is None
    assert preflight(CONF_DIR, "train", ["-m", "task=glob(nothing_*)"]) == "task=glob(nothing_*) matches no option of 'task'"
    schemas = preflight(CONF_DIR, "train", ["-m", "algo=glob(*)"])
    assert "appo_schema" in schemas and "exclude=*_schema" in schemas and "\n" not in schemas
    assert preflight(CONF_DIR, "train", ["-m", "algo=glob(*,exclude=*_schema)"]) is None


def test_mmlu_subjects_extend_the_mmlu_config():
    whole, one = composed("task=mmlu").task, composed("task=mmlu_anatomy").task
    differ = {k for k in whole if whole[k] != one[k]}
    assert differ == {"name", "hub_config", "category"}
    assert (one.name, one.hub_config, one.category) == ("mmlu_anatomy", "anatomy", "STEM")


# --- comments and generated files -------------------------------------------------------------
def test_every_schema_field_says_what_it_does():
    make = script("make_reference_config")
    comments = make.field_comments(Path(schema.__file__).read_text(encoding="utf-8"))
    classes = [c for c in vars(schema).values() if dataclasses.is_dataclass(c) and c.__module__ == schema.__name__]
    assert len(classes) >= 14
    silent = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
              if len(make.comments_of(c, comments).get(f.name, "")) < 10]
    assert not silent, f"fields without a comment in promptrl/config.py: {silent}"


def test_reference_configs_are_what_the_generator_writes():
    docs = script("make_reference_config").documents()
    committed = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "docs" / "config").glob("*.yaml")}
    assert set(committed) == set(docs)
    stale = [name for name in docs if committed[name] != docs[name]]
    assert not stale, f"rerun `python scripts/make_reference_config.py`: {stale} differ"
    assert "rollback_threshold: 0.1" in docs["train.yaml"] and "# ... and restore the policy" in docs["train.yaml"]


def test_task_configs_are_what_the_generator_writes(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "experiment").mkdir()
    script("make_task_configs").main(tmp_path / "task")
    written = sorted(tmp_path.rglob("*.yaml"))
    assert len(written) > 100
    stale = [str(p.relative_to(tmp_path)) for p in written
             if p.read_text(encoding="utf-8") != (REPO / "conf" / p.relative_to(tmp_path)).read_text(encoding="utf-8")]
    assert not stale, f"rerun `python scripts/make_task_configs.py`: {stale} differ"


def test_the_reference_config_shows_the_schema_not_a_resolved_environment():
    text = (REPO / "docs" / "config" / "train.yaml").read_text(encoding="utf-8")
    assert "data_dir: '${oc.env:PROMPTRL_DATA,null}'" in text
    assert OmegaConf.create(text.replace("${", "$ {")).algo.name == "appo"  # it is valid YAML


def test_library_chatter_goes_to_the_log_file_only(tmp_path, monkeypatch):
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="test"):
        hydra_cfg = compose("train", return_hydra_config=True, overrides=[f"hydra.runtime.output_dir={tmp_path}"]).hydra
    assert hydra_cfg.job.name == "train"
    logging_cfg = OmegaConf.to_container(hydra_cfg.job_logging, resolve=False)
    logging_cfg["handlers"]["file"]["filename"] = str(tmp_path / "train.log")
    console = io.StringIO()
    logging_cfg["handlers"]["console"]["stream"] = console
    saved = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(logging_cfg)
        route_transformers_logs()
        logging.captureWarnings(True)
        logging.getLogger("promptrl.train").info("best prompt chosen")
        logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old_argument is deprecated", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        for h in logging.root.handlers + logging.getLogger("promptrl").handlers:
            h.close()
        logging.root.handlers, logging.getLogger("promptrl").handlers = saved[0], []
        logging.root.setLevel(saved[1])
        logging.getLogger("promptrl").propagate = True
        from transformers.utils import logging as hf_logging

        hf_logging.enable_default_handler()
        hf_logging.disable_propagation()
    assert console.getvalue().rstrip().endswith("] best prompt chosen")
    assert "weights" not in console.getvalue() and "deprecated" not in console.getvalue()
    log = (tmp_path / "train.log").read_text()
    assert "some weights were not used" in log and "old_argument is deprecated" in log and "best prompt chosen" in log


# --- targets larger than one GPU, and the SLURM launcher's requeue settings ---------------------
def test_a_tensor_parallel_target_and_its_served_twin(monkeypatch):
    tp = composed("target=llama3-70b").target
    assert (tp.backend, tp.vllm.tensor_parallel_size, tp.dtype) == ("vllm", 4, "bfloat16")
    assert composed("target=llama3-70b", "target.vllm.tensor_parallel_size=8").target.vllm.tensor_parallel_size == 8
    monkeypatch.delenv("PROMPTRL_TARGET_URL", raising=False)
    served = composed("target=llama3-70b-served").target
    # the same model (its tokenizer is loaded here, its name keys results and the score cache)
    assert (served.name, served.model, served.backend) == (tp.name, tp.model, "server")
    assert served.server.url == "http://localhost:8000/v1" and served.server.served_model == tp.model
    monkeypatch.setenv("PROMPTRL_TARGET_URL", "http://gpu-node-7:8000/v1")
    assert composed("target=llama3-70b-served").target.server.url == "http://gpu-node-7:8000/v1"
    assert composed("target=llama3-70b-served", "target.server.url=http://x:1/v1").target.server.url == "http://x:1/v1"


def test_slurm_jobs_are_requeued_after_a_time_limit():
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="train"):
        launcher = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    # hydra-submitit-launcher's default max_num_timeout is 0: a job at its time limit would end unfinished
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s >= 60
