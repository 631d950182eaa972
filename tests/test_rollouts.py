"""agent.backend=vllm without an engine: what decides when an adapter is synced (tensor version
counters), how the engine's rows become `Samples`, which ranks vLLM can serve, and when one
engine serves target and agent. The engine itself is tested in test_vllm_agent.py."""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from promptrl.agent import ANCHOR, POLICY, Agent
from promptrl.config import register_configs
from promptrl.engines import check_gpu_memory, shares_engine
from promptrl.errors import UserError
from promptrl.rollouts import engine_lora_rank

from conftest import REPO, SHARED_DATA, make_model, make_tokenizer


def make_agent():
    tok = make_tokenizer()
    torch.manual_seed(0)
    return Agent(make_model(len(tok)), tok, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_new_tokens=6)


def test_adapter_versions_change_on_every_write_and_only_then():
    agent = make_agent()
    policy, anchor = agent.adapter_versions(POLICY), agent.adapter_versions(ANCHOR)
    ids = agent.query_ids("classify the sentiment", "the instruction was")
    agent.sample(ids, 2, POLICY)  # reading the weights is not a write
    agent.evaluate_actions(ids, torch.tensor([[5, 6]]), POLICY)
    assert agent.adapter_versions(POLICY) == policy
    opt = torch.optim.Adam(agent.trainable_parameters(), lr=1e-2)
    logp, _ = agent.evaluate_actions(ids, torch.tensor([[5, 6]]), POLICY)
    logp.sum().backward()
    opt.step()
    assert agent.adapter_versions(POLICY) != policy, "an optimizer step must mark the policy stale"
    assert agent.adapter_versions(ANCHOR) == anchor, "training the policy does not touch the anchor"
    agent.copy(POLICY, ANCHOR)
    assert agent.adapter_versions(ANCHOR) != anchor, "an anchor update must mark the anchor stale"


def test_pack_pads_after_the_first_end_token_and_zeroes_padding_logprobs():
    agent = make_agent()
    eos = agent.eos_ids[0]
    rows = [([7, 8, eos], [-0.5, -0.25, -0.125]), ([9, 10, 11, 12], [-1.0, -1.0, -1.0, -1.0]), ([eos], [-2.0])]
    responses, mask, logprobs = agent.pack(rows)
    assert responses.shape == (3, 4)
    assert responses[0].tolist() == [7, 8, eos, agent.pad_id]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert logprobs[0].tolist() == [-0.5, -0.25, -0.125, 0.0]
    assert logprobs[2].tolist() == [-2.0, 0.0, 0.0, 0.0]
    assert agent.decode(responses[0], mask[0]) == agent.tokenizer.decode([7, 8])


@pytest.mark.parametrize("rank, served", [(1, 1), (4, 8), (8, 8), (12, 16), (300, 320)])
def test_engine_lora_rank_is_the_smallest_served_rank_that_holds_the_adapter(rank, served):
    assert engine_lora_rank(rank) == served


def test_a_rank_vllm_cannot_serve_is_a_clear_error():
    with pytest.raises(UserError, match="agent.lora_r=1024 is above the largest LoRA rank vLLM serves"):
        engine_lora_rank(1024)


def cfg(*overrides):
    register_configs()
    os.environ.setdefault("PROMPTRL_DATA", str(SHARED_DATA))
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("overrides, shared", [
    (["agent.backend=vllm", "target.backend=vllm", "agent.dtype=float32", "target.dtype=float32"], True),
    (["agent.backend=vllm", "target.backend=vllm", "agent.dtype=auto", "target.dtype=auto"], True),
    (["agent.backend=hf", "target.backend=vllm"], False),
    (["agent.backend=vllm", "target.backend=hf"], False),
    (["agent.backend=vllm", "target.backend=vllm", "agent.dtype=float32", "target.dtype=bfloat16"], False),  # not one copy of the weights
    (["agent.backend=vllm", "target.backend=vllm", "target=gemma3-270m"], False),
    (["agent.backend=vllm", "target.backend=vllm", "target.revision=abc123"], False),
])
def test_one_engine_only_for_the_same_weights_dtype_and_device(overrides, shared):
    assert shares_engine(cfg(*overrides)) is shared


GPU0, GPU1, CPU = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")


def test_two_engines_that_cannot_fit_on_one_gpu_are_refused_before_anything_loads():
    two_engines = cfg("agent.backend=vllm", "target.backend=vllm", "target=gemma3-270m")
    with pytest.raises(UserError, match=r"target.vllm.gpu_memory_utilization=0.9 \+ agent.vllm.gpu_memory_utilization=0.3"):
        check_gpu_memory(two_engines, (GPU0, torch.device("cuda")))  # "cuda" is GPU 0
    check_gpu_memory(two_engines, (GPU0, GPU1))  # a GPU each
    check_gpu_memory(two_engines, (CPU, CPU))
    fits = cfg("agent.backend=vllm", "target.backend=vllm", "target=gemma3-270m",
               "target.vllm.gpu_memory_utilization=0.55", "agent.vllm.gpu_memory_utilization=0.25")
    check_gpu_memory(fits, (GPU0, GPU0))
    one_engine = cfg("agent.backend=vllm", "target.backend=vllm", "agent.dtype=bfloat16", "target.dtype=bfloat16")
    check_gpu_memory(one_engine, (GPU0, GPU0))
