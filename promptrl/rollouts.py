"""The agent's samples from a vLLM engine that serves its adapters (agent.backend=vllm).

HF `generate` is most of an APPO step; every RL engine users know (TRL's `use_vllm`, verl)
samples rollouts with vLLM and syncs the trained weights into it. Here the weights that change
are two small LoRA adapters on a frozen base, so a sync is: save the adapter (safetensors, a few
MB) and register it under a new LoRA id, removing the old one. A new id rather than an in-place
reload under the old one, because vLLM's prefix cache keys KV blocks by adapter: an old id would
serve KV computed with the old weights. (vLLM 0.32 loads adapters from a path only; there is no
in-memory form to compare against.)

What changed an adapter is detected, not declared: every in-place write to a tensor (Adam's
step, `Agent.copy`, a checkpoint load) bumps its version counter, so the adapter's parameter
versions are compared before each sampling call and a changed adapter is synced first. PPO's
old log-probs are still computed by the training model; vLLM's own are kept to log the gap.

When the target is the same base model on a vLLM engine (the embedded default), one engine
serves both: target requests carry no adapter, agent requests carry the policy's or the anchor's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from promptrl.errors import UserError

log = logging.getLogger(__name__)
BACKENDS = ("hf", "vllm")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels are built for


def engine_lora_rank(rank: int) -> int:
    """The smallest rank vLLM serves that holds a rank-`rank` adapter."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise UserError(f"agent.lora_r={rank} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                    "use agent.backend=hf or a smaller rank")


def shares_engine(cfg) -> bool:
    """True when one vLLM engine can serve the target and, through adapters, the agent: both on
    vLLM, the same weights (path and revision), dtype and device."""
    from promptrl.models import model_path
    from promptrl.scoring.vllm_engine import engine_dtype

    agent, target = cfg.agent, cfg.target
    if agent.backend != "vllm" or target.backend != "vllm":
        return False
    same = (model_path(agent, cfg.cache_dir) == model_path(target, cfg.cache_dir) and agent.revision == target.revision
            and engine_dtype(agent) == engine_dtype(target) and agent.device == target.device)
    return same


def check_gpu_memory(cfg, gpus: tuple[torch.device, torch.device]) -> None:
    """Two vLLM engines on one GPU (agent and target on different models) each take their
    gpu_memory_utilization of it when they start, and the agent's training copy needs some of
    what is left; a plan that adds up past 0.9 fails when the second engine starts, so refuse
    it before anything loads. `gpus`: the agent's and the target's resolved devices."""
    agent_dev, target_dev = gpus
    if agent_dev.type != "cuda" or target_dev.type != "cuda" or (agent_dev.index or 0) != (target_dev.index or 0):
        return
    if cfg.agent.backend != "vllm" or cfg.target.backend != "vllm" or shares_engine(cfg):
        return
    t, a = cfg.target.vllm.gpu_memory_utilization, cfg.agent.vllm.gpu_memory_utilization
    if t + a > 0.9:
        raise UserError(f"target.vllm.gpu_memory_utilization={t} + agent.vllm.gpu_memory_utilization={a} = {t + a:.2f} "
                        f"of one GPU for two engines; expected at most 0.9 in all (the agent's training copy needs "
                        f"the rest), e.g. target.vllm.gpu_memory_utilization=0.55 agent.vllm.gpu_memory_utilization=0.25")


def start_agent_engine(cfg):
    """The agent's engine; when `shares_engine`, the target's too, with target.vllm's options."""
    from promptrl.scoring.vllm_engine import start_engine

    shared = shares_engine(cfg)
    engine_cfg, where = (cfg.target.vllm, "target.vllm") if shared else (cfg.agent.vllm, "agent.vllm")
    llm = start_engine(cfg.agent, engine_cfg, cfg.cache_dir, where, cfg.target.num_threads if shared else None,
                       lora_rank=engine_lora_rank(cfg.agent.lora_r))
    log.info("agent rollouts on vLLM (%s)", "one engine with the target" if shared else "an engine of its own")
    return llm


class VLLMRollouts:
    """Samples of an `Agent`'s adapters from a vLLM engine (see the module docstring)."""

    def __init__(self, llm, agent):
        self.llm, self.agent = llm, agent
        self.dir = Path(tempfile.mkdtemp(prefix="promptrl-adapters-"))
        self.loaded: dict[str, tuple[tuple[int, ...], object]] = {}  # adapter -> (versions, LoRARequest)
        self.next_id = 1
        self.syncs, self.sync_seconds = 0, 0.0

    def lora_request(self, adapter: str):
        """The engine's request for the adapter's current weights (None: the base model)."""
        from vllm.lora.request import LoRARequest

        from promptrl.agent import BASE

        if adapter == BASE:
            return None
        versions = self.agent.adapter_versions(adapter)
        if adapter in self.loaded and self.loaded[adapter][0] == versions:
            return self.loaded[adapter][1]
        start = time.time()
        lora_id, self.next_id = self.next_id, self.next_id + 1
        path = self.agent.save_adapter(adapter, self.dir / str(lora_id))
        request = LoRARequest(f"{adapter}-{lora_id}", lora_id, str(path))
        if adapter in self.loaded:
            old = self.loaded[adapter][1]
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(Path(old.lora_path).parent, ignore_errors=True)
        self.loaded[adapter] = (versions, request)
        self.syncs += 1
        self.sync_seconds += time.time() - start
        return request

    def sample(self, queries: list[list[int]], n: int, adapter: str, max_tokens: int, stop_ids: list[int],
               temperature: float = 1.0) -> list[list[tuple[list[int], list[float]]]]:
        """n samples per query, by default at temperature 1 with top-k and top-p off (0: greedy,
        n = 1): per query, n pairs of (token ids, each token's log-prob under the engine). A
        sample that stops at an end token includes it, as HF's does. The seed of each request is
        drawn from torch's RNG, so a run's seed (and a resumed checkpoint's RNG state) decides
        the samples."""
        from vllm import SamplingParams

        request = self.lora_request(adapter)
        params = [SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_tokens, stop_token_ids=list(stop_ids),
                                 logprobs=0, detokenize=False, seed=int(torch.randint(0, 2**31 - 1, ())))
                  for _ in queries]
        outputs = self.llm.generate([{"prompt_token_ids": q} for q in queries], params, lora_request=request,
                                    use_tqdm=False)
        return [[(list(o.token_ids), [step[t].logprob for step, t in zip(o.logprobs, o.token_ids)]) for o in out.outputs]
                for out in outputs]

    def close(self) -> None:
        from promptrl.scoring.vllm_engine import shutdown

        shutil.rmtree(self.dir, ignore_errors=True)
        shutdown(self.llm)
