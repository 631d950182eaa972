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
serves both: target requests carry no adapter, agent requests carry the policy's or the anchor's
(which engines exist and who starts them: promptrl/engines.py).
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
