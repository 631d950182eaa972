"""The task's manual (human-written) prompt as an "optimiser": no agent, no target calls.

It gives the manual prompt a row of its own in an equal-budget comparison, evaluated by the same
final evaluation as every searched prompt.
"""

from __future__ import annotations

from promptrl.algos.base import PromptOptimizer


class ManualPrompt(PromptOptimizer):
    needs_agent = False

    def finished(self) -> bool:
        return bool(self.queue.items)

    def train_step(self) -> dict:
        self.queue.offer(self.task.manual_prompt, 0.0, self.step)
        return {"prompts": [self.task.manual_prompt]}
