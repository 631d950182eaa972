"""No deprecation warnings from how promptrl calls transformers and peft (issue 23).

A deprecated argument warns long before it is removed: transformers 5.24 renamed the KV-cache
keyword `past_key_values` to `cache` (removed from `forward` in 5.40) and deprecated
`is_gradient_checkpointing`. These tests run every HF call promptrl makes on a tiny model
(agent sampling with and without the shared query cache, target scoring with and without
prefix reuse, one-token and multi-token label words, greedy generation, one PPO update) with
deprecations turned into errors, so a deprecated call that comes back fails here while the
range in pyproject.toml still allows a transformers that warns about it, not on the day a
release removes it.

Which warnings are errors:
- FutureWarning, from any module. transformers issues its deprecations as FutureWarning with
  the caller's frame as the origin, which for a model called through `nn.Module.__call__` is
  torch's module.py and for `generate` through peft is peft_model.py: a filter by module would
  miss them.
- DeprecationWarning only where the warning is attributed to transformers, peft or promptrl:
  other libraries (jinja2 under chat templates, tokenizers, torch internals) raise their own
  about their own dependencies, which promptrl cannot change and which would make this flaky.
- A record logged by transformers whose message says "deprecated": some deprecations are log
  records, not warnings (reading `output.past_key_values` in 5.24 logs one, once per process,
  so the once-cache is cleared first).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch
from transformers.utils import logging as hf_logging

from promptrl.agent import POLICY
from promptrl.algos.appo import APPOTrainer
from promptrl.scoring.hf import HFScorer
from promptrl.tasks import Task

from conftest import make_model, make_tokenizer
from test_agent_trainer import algo_cfg, make_agent, perturb_policy, toy_task

# Warnings attributed to these modules are errors whatever their category (see the docstring).
OWN_MODULES = r"(transformers|peft|promptrl)(\.|$)"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def deprecations_are_errors():
    records = _Records()
    hf_root = logging.getLogger("transformers")
    once = getattr(hf_logging.warning_once, "cache_clear", None)
    if once is not None:
        once()  # a message logged once before (another test) would not be logged again
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_root.addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.filterwarnings("error", category=DeprecationWarning, module=OWN_MODULES)
            yield
    finally:
        hf_root.removeHandler(records)
        hf_logging.set_verbosity(verbosity)
    logged = [f"{r.name}: {r.getMessage()}" for r in records.records if "deprecat" in r.getMessage().lower()]
    assert not logged, f"transformers logged deprecations: {logged}"


def test_the_checker_catches_a_deprecated_call():
    """The context above fails on each kind of deprecation it is meant to catch."""
    with pytest.raises(FutureWarning), deprecations_are_errors():
        warnings.warn("`old` is deprecated", FutureWarning, stacklevel=1)
    with pytest.raises(AssertionError, match="logged deprecations"), deprecations_are_errors():
        hf_logging.get_logger("transformers.utils.generic").warning_once("`old`/`older` are deprecated. Use `new` instead.")


def test_agent_sampling_and_one_ppo_update_raise_no_deprecation(tmp_path):
    task = toy_task()
    tok = make_tokenizer()
    with deprecations_are_errors():
        agent = make_agent(max_new_tokens=6)  # get_peft_model and add_adapter
        target = HFScorer(make_model(len(tok), seed=123), tok, task, "tiny-target")
        trainer = APPOTrainer(algo_cfg(prompts_per_step=3, ppo_epochs=1), task, target, agent, tmp_path)
        perturb_policy(agent)
        torch.manual_seed(0)
        query = trainer.make_query()
        samples = agent.sample(query, 3)  # the query's KV cache shared by all samples
        assert len(samples.prompts) == 3
        agent.sample(query[:1], 2)  # a one-token query: no cache to share
        assert len(agent.sample_each([query, query[:-2]])) == 2  # left-padded batch, plain generate
        row = trainer.ppo_step(trainer.epoch_batches(0)[0])  # sample, score on the target, one PPO update
        assert "policy_loss" in row and "skipped" not in row
        with torch.no_grad():
            agent.evaluate_actions(query, samples.responses, POLICY)


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("label_words", [[" bad", " good"], [" not good", " very good"]], ids=["one-token", "multi-token"])
def test_target_scoring_raises_no_deprecation(prefix_reuse, label_words):
    base = toy_task()
    task = Task(name="toy", kind="classification", template=base.template, label_words=label_words, metric="accuracy",
                manual_prompt=base.manual_prompt, train=base.train, dev=base.dev, test=base.test)
    tok = make_tokenizer()
    with deprecations_are_errors():
        scorer = HFScorer(make_model(len(tok), seed=1), tok, task, "tiny-target", prefix_reuse=prefix_reuse)
        scores = scorer.score(["classify the sentiment of this review", "is it good or bad"], task.train)
        assert scores.label_logprobs.shape == (2, len(task.train), 2)
        assert len(scorer.generate(["the movie was", "i love"], max_new_tokens=4, stop=["."])) == 2
