"""What a run will cost, in the ledger's units (promptrl/ledger.py), before anything runs: `--plan`.

Target calls come from the algorithm's schedule (exact, or the budget). Tokens are projected from
the task's own data: each call's input is the rendered template (or the chat messages) of a real
example, with an instruction of `agent.max_new_tokens` tokens — the longest the agent can write,
so the projection is an upper bound, as the calls are. The agent's tokens are what its schedule
samples, each instruction at that same maximum, and each query a meta-prompt with real
demonstrations. Money follows from the chat endpoints' prices.

Tokens are counted with the model's own tokenizer when it is on this machine (a local model's
files, or `*.chat.tokenizer` for a hosted one) and never downloaded — the plan runs offline and
before any model loads; without one, 4 characters make a token and the plan says so (≈).
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers
MESSAGE_OVERHEAD = 4  # role and separator tokens a chat template adds per message, without a tokenizer


class TokenCounter:
    """Counts tokens of plain text or of chat messages, exactly with a tokenizer, else ≈ chars/4."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.exact = tokenizer is not None

    def text(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def messages(self, messages: list[dict]) -> int:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            return sum(self.text(m["content"]) + MESSAGE_OVERHEAD for m in messages) + MESSAGE_OVERHEAD
        return len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])

    def filler(self, n: int) -> str:
        """Text of about n tokens: the stand-in for an instruction not yet written."""
        if self.tokenizer is None:
            return "x" * (n * CHARS_PER_TOKEN)
        word = " instruction"
        return word.strip() + word * max(n - 1, 0)


def counter_for(model_cfg, cache_dir: str) -> TokenCounter:
    """The model's tokenizer if it is already on this machine, else the chars/4 rule."""
    from transformers import AutoTokenizer

    for source in tokenizer_sources(model_cfg, cache_dir):
        try:
            return TokenCounter(AutoTokenizer.from_pretrained(source, local_files_only=True))
        except Exception:  # not on this machine, or not a tokenizer: try the next source
            continue
    return TokenCounter()


def tokenizer_sources(model_cfg, cache_dir: str) -> list[str]:
    if model_cfg.get("backend") == "chat":
        return [model_cfg.chat.tokenizer] if model_cfg.chat.get("tokenizer") else []
    if model_cfg.get("gguf_package"):  # the embedded models: their converted directory, once converted
        from promptrl.models import converted_dir_name

        path = Path(cache_dir).expanduser() / "models" / converted_dir_name(model_cfg.name, model_cfg.gguf_package,
                                                                           model_cfg.gguf_file)
        return [str(path)] if path.is_dir() else []
    return [model_cfg.model] if model_cfg.get("model") else []


# --- the projection -------------------------------------------------------------------------------
def target_call_tokens(cfg, task, counter: TokenCounter, examples, instruction: str) -> tuple[float, float]:
    """Mean (input, output) tokens of one target call on these examples with this instruction."""
    chat = cfg.target.get("backend") == "chat"
    inputs = []
    for ex in examples:
        if chat and cfg.target.chat.placement == "system":  # as ChatScorer.messages: no system message for no instruction
            system = [{"role": "system", "content": instruction}] if instruction.strip() else []
            messages = system + [{"role": "user", "content": task.render("", ex.text)}]
        elif chat:
            messages = [{"role": "user", "content": task.render(instruction, ex.text)}]
        else:
            inputs.append(counter.text(task.render(instruction, ex.text)))
            continue
        inputs.append(counter.messages(messages))
    if task.is_generation:
        output = task.max_new_tokens  # at most: answers stop at their stop string
    elif chat:
        output = cfg.target.chat.answer_tokens if cfg.target.chat.scoring == "generate" else 1
    else:
        output = 0  # label log-probs: one forward, nothing written
    return statistics.fmean(inputs), float(output)


def agent_query_tokens(cfg, task, counter: TokenCounter) -> int:
    """Tokens of one meta-prompt with real demonstrations (the first num_demos training examples)."""
    from promptrl.prompts import format_demos, user_message

    meta = cfg.algo.get("meta_prompt") or ""
    demos = format_demos(task, task.train[:cfg.algo.get("num_demos") or 0])
    return counter.messages([{"role": "user", "content": user_message(meta, demos)}])


def project(cfg, task, calls: dict, trainer_cls) -> dict:
    """The run's projected cost in the ledger's units; None where the schedule does not say."""
    target = counter_for(cfg.target, cfg.cache_dir)
    agent = counter_for(cfg.agent, cfg.cache_dir) if trainer_cls.needs_agent else TokenCounter()
    longest = target.filler(cfg.agent.max_new_tokens)
    train_in, out = target_call_tokens(cfg, task, target, task.train, longest)
    train, final = calls["train"], calls["final"]
    # the final evaluation: the manual and the empty prompt as they are, the rest (the queue, or
    # one instruction per input) at the longest instruction
    evaluated = task.dev + task.test
    written = final / len(evaluated) - 2
    final_tokens = len(evaluated) * (written * target_call_tokens(cfg, task, target, evaluated, longest)[0]
                                     + target_call_tokens(cfg, task, target, evaluated, task.manual_prompt or "")[0]
                                     + target_call_tokens(cfg, task, target, evaluated, "")[0])
    plan = {"target_calls": train + final,
            "target_input_tokens": round(train * train_in + final_tokens),
            "target_output_tokens": round((train + final) * out),
            "agent_input_tokens": None, "agent_output_tokens": None,
            "exact_tokens": target.exact and (agent.exact or not trainer_cls.needs_agent)}
    sampled = trainer_cls.planned_samples(cfg.algo, task) if trainer_cls.needs_agent else (0, 0)
    if sampled is not None:
        queries, samples = sampled
        if calls["schedule"] and train < calls["schedule"]:  # a budget ends it first: that share of the samples
            queries, samples = (math.ceil(x * train / calls["schedule"]) for x in (queries, samples))
        plan["agent_input_tokens"] = queries * agent_query_tokens(cfg, task, agent) if queries else 0
        plan["agent_output_tokens"] = samples * cfg.agent.max_new_tokens
    plan["usd"] = money(cfg, plan)
    return plan


def money(cfg, plan: dict) -> float | None:
    """USD at the chat endpoints' prices; None when a model the run pays for has no price, or
    when nothing is paid for (local models)."""
    total, paid = 0.0, False
    for side, tokens in (("target", ("target_input_tokens", "target_output_tokens")),
                         ("agent", ("agent_input_tokens", "agent_output_tokens"))):
        model = cfg[side]
        if model.get("backend") != "chat" or (side == "agent" and not plan[tokens[1]] and not plan[tokens[0]]):
            continue
        price_in, price_out = model.chat.price_input, model.chat.price_output
        if price_in is None or price_out is None or plan[tokens[0]] is None or plan[tokens[1]] is None:
            return None
        total += (plan[tokens[0]] * price_in + plan[tokens[1]] * price_out) / 1e6
        paid = True
    return total if paid else None
