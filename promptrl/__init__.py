"""promptrl: automatic prompt tuning of LLMs with reinforcement learning (StablePrompt / APPO)."""

__version__ = "0.1.0"
