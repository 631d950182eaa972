"""One cost ledger for a run: what the target and the agent consumed, in calls, tokens, seconds and money.

The counts live where the work happens — the scorer counts target calls and input tokens, a chat
endpoint the tokens its server reported, the agent the tokens it samples and the token-passes of
its training — and the run's `Ledger` (one object shared by the scorer, the agent and the trainer)
adds the seconds of each phase and reads everything into one `cost` block: each metrics row holds
it (cumulative, so a report can put runs side by side at equal cost in any unit) and so does
results.json. The ledger is checkpointed with the trainer, chat endpoints' counters included, so
a resumed run reports what the whole run cost, not its last session; what a killed session spent
after its last checkpoint is not in it (its finished scores come back from the score cache).

Money is claimed only where it is known: a chat endpoint with both prices set. Local models cost
seconds, not money, and `usd` stays null for them.
"""

from __future__ import annotations

import contextlib
import time

PHASES = ("generate", "score", "update", "evaluation")
AGENT_COUNTS = ("agent_input_tokens", "agent_output_tokens", "agent_train_forward_tokens", "agent_train_backward_tokens")


class Ledger:
    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.counts = dict.fromkeys(AGENT_COUNTS, 0)
        self.target_output_tokens = 0  # tokens a local target wrote (generation tasks); chat endpoints count their own
        self._phase: str | None = None

    def add(self, key: str, n: int) -> None:
        self.counts[key] += int(n)

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Time spent in `phase`; a phase inside another (scoring during the final evaluation,
        sampling during an anchor check's...) is the outer one's, so no second is counted twice."""
        if self._phase is not None:
            yield
            return
        self._phase, start = phase, time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self._phase = None

    # --- the cost block --------------------------------------------------------------------------
    def cost(self, scorer, agent) -> dict:
        """The run's spend so far, one flat dict (every value a number, or None where unknown)."""
        target_chat, agent_chat = chat_endpoint(scorer), chat_endpoint(agent)
        out = {"target_calls": scorer.calls, "target_input_tokens": scorer.tokens,
               "target_output_tokens": target_chat.output_tokens if target_chat else self.target_output_tokens}
        counts = dict(self.counts)
        if agent_chat is not None:  # a hosted proposer: the server's usage is its token count
            counts.update(agent_input_tokens=agent_chat.input_tokens, agent_output_tokens=agent_chat.output_tokens)
        out.update(counts)
        out.update({f"time_spent_{p}": round(s, 3) for p, s in self.seconds.items()})  # time_*: wall-clock keys
        target_usd = target_chat.cost_usd if target_chat else None
        agent_usd = agent_chat.cost_usd if agent_chat else None
        priced = [e for e in (target_chat, agent_chat) if e is not None]
        out.update(target_usd=target_usd, agent_usd=agent_usd,
                   usd=sum(e.cost_usd for e in priced) if priced and all(e.cost_usd is not None for e in priced) else None)
        return out

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self, scorer, agent) -> dict:
        endpoints = {}
        for side, owner in (("target", scorer), ("agent", agent)):
            e = chat_endpoint(owner)
            if e is not None:
                endpoints[side] = {k: getattr(e, k) for k in ENDPOINT_COUNTS}
        return {"seconds": dict(self.seconds), "counts": dict(self.counts),
                "target_output_tokens": self.target_output_tokens, "endpoints": endpoints}

    def load_state_dict(self, state: dict, scorer, agent) -> None:
        self.seconds.update(state["seconds"])
        self.counts.update(state["counts"])
        self.target_output_tokens = state["target_output_tokens"]
        for side, owner in (("target", scorer), ("agent", agent)):
            e, saved = chat_endpoint(owner), state["endpoints"].get(side)
            if e is not None and saved is not None:
                for k in ENDPOINT_COUNTS:
                    setattr(e, k, saved[k])


ENDPOINT_COUNTS = ("requests", "input_tokens", "output_tokens", "requests_without_usage")


def chat_endpoint(owner):
    """The ChatEndpoint a scorer or agent calls, or None for local models."""
    from promptrl.chat import ChatEndpoint

    e = getattr(owner, "endpoint", None)
    return e if isinstance(e, ChatEndpoint) else None


def priced(scorer, agent) -> bool:
    """Whether the run's spend has a money figure: some chat endpoint, and every one with both prices."""
    endpoints = [e for e in (chat_endpoint(scorer), chat_endpoint(agent)) if e is not None]
    return bool(endpoints) and all(e.price_input is not None and e.price_output is not None for e in endpoints)
