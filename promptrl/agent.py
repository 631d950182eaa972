"""The prompt-writing agent: a frozen instruct LLM with two LoRA adapters and, for GAE, two value heads.

`policy` is trained; `anchor` is APPO's KL reference. Group-relative estimators (GRPO, RLOO)
need no critic, so their agent is built with `value_heads=False` and has none to train or save. Both live on the same frozen base, so the
anchor costs a few MB, and "anchor <- policy" or "policy <- anchor" is a real copy of weights
(the authors' code aliased Python objects instead, REFERENCE §4.2). What the agent is asked is
written in promptrl/prompts.py; this module is the policy that answers.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from promptrl.errors import UserError
from promptrl.hfcompat import cache_kwargs, output_cache
from promptrl.ledger import Ledger
from promptrl.models import check_query_fits, context_length, output_logits
from promptrl.prompts import build_query_text

log = logging.getLogger(__name__)

POLICY, ANCHOR, BASE = "policy", "anchor", "base"
# Chat templates end the assistant's turn with these; an instruct model often emits one instead
# of (or before) its EOS, and the instruction must stop there.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")


@dataclass
class Samples:
    query: torch.Tensor  # [Q] query token ids (shared by every sample)
    responses: torch.Tensor  # [B, T] sampled ids, padded after the first EOS
    mask: torch.Tensor  # [B, T] 1 up to and including the first EOS
    prompts: list[str]  # decoded instructions
    # [B, T] each token's log-prob under the sampler, when it is not the training model
    # (agent.backend=vllm), to log how far the two are apart; None for HF sampling.
    logprobs: torch.Tensor | None = None


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on every token up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).float()


class Agent(nn.Module):
    def __init__(self, base_model, tokenizer, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                 target_modules=None, max_new_tokens=100, no_chat_template="error", value_heads=True):
        super().__init__()
        if no_chat_template not in ("error", "plain"):
            raise UserError(f"agent.no_chat_template={no_chat_template!r}; expected one of: error, plain")
        if not tokenizer.chat_template and no_chat_template == "error":
            build_query_text(tokenizer, "", "", no_chat_template)  # raises the explanatory error now, not mid-run
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.no_chat_template = no_chat_template
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                          task_type="CAUSAL_LM", target_modules=list(target_modules) if target_modules else None)
        with warnings.catch_warnings():
            # peft (0.21.2 and before) reads `model.is_gradient_checkpointing` in PeftModel.__init__,
            # which transformers >= 5.23 deprecates for `is_activation_checkpointing` (FutureWarning
            # on every run). It is peft's own access, not an argument of ours: silenced here only.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            self.model = get_peft_model(base_model, lora, adapter_name=POLICY)
        self.model.add_adapter(ANCHOR, lora)
        device = next(base_model.parameters()).device
        self.model.to(device)  # both adapters beside the weights they adapt (peft skips some devices)
        # The value heads live beside the model (a head left on the CPU default would meet CUDA
        # states in evaluate_actions) and in fp32 whatever the base dtype, like the adapters.
        # None without a critic (group-relative advantages): nothing to build, train or save.
        hidden = base_model.config.get_text_config().hidden_size
        self.value_heads = nn.ModuleDict({k: nn.Linear(hidden, 1, device=device, dtype=torch.float32)
                                          for k in (POLICY, ANCHOR)}) if value_heads else None
        self.model.set_adapter(POLICY)
        self.copy(POLICY, ANCHOR)  # the anchor starts as the initial agent
        gen = getattr(base_model, "generation_config", None)
        eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else tokenizer.eos_token_id
        vocab = tokenizer.get_vocab()
        end_of_turn = [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
        self.eos_ids = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id, *end_of_turn} - {None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.rollouts = None  # a promptrl.rollouts.VLLMRollouts when agent.backend=vllm, else HF generate
        self.ledger = Ledger()  # the run's, attached by open_models: tokens sampled and trained on, seconds sampling

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()

    # --- adapters -------------------------------------------------------------------------
    def lora_params(self, adapter: str) -> dict[str, nn.Parameter]:
        tag = f".{adapter}."
        return {n.replace(tag, ".{}."): p for n, p in self.model.named_parameters() if "lora_" in n and tag in n}

    def trainable_parameters(self) -> list[nn.Parameter]:
        heads = list(self.value_heads[POLICY].parameters()) if self.value_heads is not None else []
        return list(self.lora_params(POLICY).values()) + heads

    def adapter_versions(self, adapter: str) -> tuple[int, ...]:
        """The version counters of the adapter's tensors (and its value head's): any in-place
        write (an optimizer step, `copy`, a checkpoint load) changes them, so a sampler that
        holds a copy of the adapter can tell when it is stale."""
        return tuple(p._version for p in self.lora_params(adapter).values())

    def save_adapter(self, adapter: str, directory: Path) -> Path:
        """The adapter as a peft directory (adapter_config.json + safetensors) that vLLM loads."""
        self.model.save_pretrained(directory, selected_adapters=[adapter])
        return directory / adapter  # peft writes a non-default adapter into a subdirectory of its name

    @torch.no_grad()
    def copy(self, src: str, dst: str) -> None:
        """dst adapter and value head <- src (a weight copy, not an alias)."""
        dst_params = self.lora_params(dst)
        for key, p in self.lora_params(src).items():
            dst_params[key].copy_(p)
        if self.value_heads is not None:
            for d, s in zip(self.value_heads[dst].parameters(), self.value_heads[src].parameters()):
                d.copy_(s)

    @contextlib.contextmanager
    def using(self, adapter: str):
        """Run the model as `policy`, `anchor`, or `base` (adapters off)."""
        if adapter == BASE:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(adapter)
        try:
            yield
        finally:
            self.model.set_adapter(POLICY)
            # set_adapter marks the active adapter trainable; the anchor must never be.
            for p in self.lora_params(ANCHOR).values():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def acting(self, adapter: str):
        """Like `using`, for sampling: with fp32 weights the adapter is folded into them (W + BA)
        and the LoRA branches switched off, so each decoded token runs one matmul per layer
        instead of three (measured 9.5 -> 8.1 s for 64 tokens x 4 samples). The weights are put
        back from a copy, bit for bit. In bf16 a small BA would round away in W + BA, so there
        the adapter stays a separate branch."""
        layers = [m for m in self.model.modules() if hasattr(m, "get_delta_weight") and adapter in getattr(m, "lora_A", {})]
        weights = [m.get_base_layer().weight for m in layers]
        # Only plain linear layers fold safely (an embedding's weight may be tied to the output layer).
        linear = all(type(m.get_base_layer()) is nn.Linear for m in layers)
        if adapter == BASE or not layers or not linear or any(w.dtype != torch.float32 for w in weights):
            with self.using(adapter):
                yield
            return
        saved = [w.detach().clone() for w in weights]
        try:
            with torch.no_grad():
                for module, w in zip(layers, weights):
                    w.add_(module.get_delta_weight(adapter))
            with self.model.disable_adapter():
                yield
        finally:
            with torch.no_grad():
                for w, original in zip(weights, saved):
                    w.copy_(original)

    # --- acting ----------------------------------------------------------------------------
    def query_ids(self, user: str, prefix: str) -> torch.Tensor:
        """The query as the agent reads it: its chat template, or plain text (agent.no_chat_template)."""
        text = build_query_text(self.tokenizer, user, prefix, self.no_chat_template)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        check_query_fits(len(ids), self.max_new_tokens, context_length(self.model, self.tokenizer))
        return torch.tensor(ids)

    @torch.no_grad()
    def sample(self, query: torch.Tensor, n: int, adapter: str = POLICY) -> Samples:
        """n instructions by ancestral sampling at temperature 1 (top-k and top-p off)."""
        with self.ledger.timed("generate"):
            return self._sample(query, n, adapter)

    def _sample(self, query: torch.Tensor, n: int, adapter: str) -> Samples:
        self.ledger.add("agent_input_tokens", len(query))  # read once, its KV cache shared by the n samples
        if self.rollouts is not None:
            return self.samples(query, self.pack(self.rollouts.sample([query.tolist()], n, adapter, self.max_new_tokens,
                                                                      self.eos_ids)[0]))
        return self.samples(query, self.masked(self.generate_padded([query], n, adapter, greedy=False)))

    @torch.no_grad()
    def sample_groups(self, queries: list[torch.Tensor], n: int, adapter: str = POLICY) -> list[Samples]:
        """n instructions from each query, as `sample`, in one generate call: a step's groups
        decode together instead of one after another (with HF, the decoding loop is most of the
        sampling time and barely grows with the batch on a small model)."""
        with self.ledger.timed("generate"):
            return self._sample_groups(queries, n, adapter)

    def _sample_groups(self, queries: list[torch.Tensor], n: int, adapter: str) -> list[Samples]:
        self.ledger.add("agent_input_tokens", sum(len(q) for q in queries))
        if self.rollouts is not None:
            rows = self.rollouts.sample([q.tolist() for q in queries], n, adapter, self.max_new_tokens, self.eos_ids)
            return [self.samples(q, self.pack(r)) for q, r in zip(queries, rows)]
        responses = self.generate_padded(queries, n, adapter, greedy=False)
        return [self.samples(q, self.masked(responses[i * n:(i + 1) * n])) for i, q in enumerate(queries)]

    @torch.no_grad()
    def sample_each(self, queries: list[torch.Tensor], adapter: str = POLICY, batch_size: int = 16) -> list[str]:
        """One instruction per query (input-specific prompts, TTE), sampled as in `sample`;
        queries are left-padded into batches so different lengths share a forward pass."""
        with self.ledger.timed("generate"):
            return self._sample_each(queries, adapter, batch_size)

    def _sample_each(self, queries: list[torch.Tensor], adapter: str, batch_size: int) -> list[str]:
        self.ledger.add("agent_input_tokens", sum(len(q) for q in queries))
        if self.rollouts is not None:
            rows = self.rollouts.sample([q.tolist() for q in queries], 1, adapter, self.max_new_tokens, self.eos_ids)
            packed = [self.pack(r) for r in rows]
        else:
            packed = [self.masked(self.generate_padded(queries[start:start + batch_size], 1, adapter, greedy=False))
                      for start in range(0, len(queries), batch_size)]
        self.ledger.add("agent_output_tokens", sum(mask.sum() for _, mask, _ in packed))
        return [self.decode(r, m) for responses, mask, _ in packed for r, m in zip(responses, mask)]

    def generate_padded(self, queries: list[torch.Tensor], n: int, adapter: str, greedy: bool) -> torch.Tensor:
        """[len(queries) * n, T] responses (query-major), queries of any lengths left-padded into
        one batch. Each query is read once and its KV cache copied to its n samples; positions
        count real tokens only, so a padded query is continued exactly as it would be alone."""
        width = max(len(q) for q in queries)
        ids = torch.full((len(queries), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(queries), width), dtype=torch.long)
        for row, q in enumerate(queries):
            ids[row, width - len(q):] = q
            attention[row, width - len(q):] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout while acting
        with self.acting(adapter), torch.inference_mode():
            cache = None
            if width > 1:
                positions = (attention.cumsum(-1) - 1).clamp(min=0)
                cache = output_cache(self.model(input_ids=ids[:, :-1], attention_mask=attention[:, :-1],
                                                position_ids=positions[:, :-1], use_cache=True))
                cache.batch_repeat_interleave(n)
            sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
            out = self.model.generate(
                input_ids=ids.repeat_interleave(n, 0), attention_mask=attention.repeat_interleave(n, 0),
                **cache_kwargs(self.model, cache), **sampling, max_new_tokens=self.max_new_tokens,
                pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            )
        self.model.train(was_training)
        return out[:, width:].cpu()

    def masked(self, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """HF-sampled responses as `pack` returns vLLM's: padded after the first end token, the mask, no log-probs."""
        if responses.shape[1] == 0:  # cannot happen with max_new_tokens >= 1, but keep shapes sane
            responses = torch.full((len(responses), 1), self.eos_ids[0])
        mask = response_mask(responses, self.eos_ids)
        return torch.where(mask.bool(), responses, torch.full_like(responses, self.pad_id)), mask, None

    def samples(self, query: torch.Tensor, packed: tuple) -> Samples:
        responses, mask, logprobs = packed
        self.ledger.add("agent_output_tokens", mask.sum())
        prompts = [self.decode(r, m) for r, m in zip(responses, mask)]
        return Samples(query=query.cpu(), responses=responses, mask=mask, prompts=prompts, logprobs=logprobs)

    def pack(self, rows: list[tuple[list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled (ids, log-probs) rows as `Samples` holds them: [B, T] ids padded after the
        first end token, its mask, and the log-probs (0 on padding)."""
        width = max(1, max(len(ids) for ids, _ in rows))
        responses = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(rows), width))
        for i, (ids, lps) in enumerate(rows):
            responses[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[i, :len(lps)] = torch.tensor(lps)
        if not any(ids for ids, _ in rows):  # max_tokens >= 1 makes this impossible; keep shapes sane
            responses[:, 0] = self.eos_ids[0]
        # A row shorter than the longest stopped at an end token (only max_tokens stops without
        # one, and then it is the longest), so the mask ends where HF's would.
        mask = response_mask(responses, self.eos_ids)
        return responses, mask, logprobs * mask

    def decode(self, response: torch.Tensor, mask: torch.Tensor) -> str:
        ids = [t for t, m in zip(response.tolist(), mask.tolist()) if m and t not in self.eos_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def evaluate_actions(self, query: torch.Tensor, responses: torch.Tensor, adapter: str = POLICY,
                         with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-prob of each response token under `adapter`, and the value of the state before it.
        The entropy of each token's distribution is left in `self.last_entropy` ([B, T], no grad):
        it comes free from the same logits and is the usual early sign of a collapsing policy.
        An agent without value heads answers only `with_values=False`."""
        if with_values and self.value_heads is None:
            raise ValueError("this agent has no value heads (built for a group-relative estimator); pass with_values=False")
        device = self.device
        B, T = responses.shape
        responses = responses.to(device)
        # token-passes of training: the query once, every (padded) response position; a pass
        # that builds a graph is also walked back by the backward
        passes = len(query) + B * max(T - 1, 0)
        self.ledger.add("agent_train_forward_tokens", passes)
        if torch.is_grad_enabled():
            self.ledger.add("agent_train_backward_tokens", passes)
        with self.using(adapter):
            base = self.model.get_base_model()
            decoder = base.get_decoder()
            # The query is shared by all B responses: run it once and give every response a
            # copy of its KV cache (gradients flow through the copies into the query pass).
            # Same result as B full sequences, at a fraction of the tokens.
            prefix = decoder(input_ids=query.to(device).unsqueeze(0), use_cache=True)
            cache = output_cache(prefix)
            cache.batch_repeat_interleave(B)
            states = prefix.last_hidden_state[:, -1:].expand(B, -1, -1)
            if T > 1:
                rest = decoder(input_ids=responses[:, :-1], **cache_kwargs(decoder, cache), use_cache=True).last_hidden_state
                states = torch.cat([states, rest], dim=1)
            # Only the states that choose response tokens go through the (large) output layer.
            logprobs = torch.log_softmax(output_logits(base, states), -1)
            logp = logprobs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                self.last_entropy = -(logprobs.exp() * logprobs).sum(-1)
            values = None
            if with_values:
                head = self.value_heads[POLICY if adapter == BASE else adapter]
                values = head(states.float()).squeeze(-1)
        return logp, values
