"""The task's manual (human-written) prompt as an "optimiser": no agent, no target calls.

It gives the manual prompt a row of its own in an equal-budget comparison, evaluated by the same
final evaluation as every searched prompt.
"""

from __future__ import annotations

from promptrl.algos.base import PromptOptimizer


class ManualPrompt(PromptOptimizer):
    needs_agent = False

    @classmethod
    def planned_calls(cls, cfg, task) -> int:
        return 0  # the manual prompt is scored in the final evaluation only

    def finished(self) -> bool:
        return bool(self.queue.items)

    def train_step(self) -> dict:
        self.queue.offer(self.task.manual_prompt, 0.0, self.step)
        return {"prompts": [self.task.manual_prompt]}
