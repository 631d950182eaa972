"""The top-k distinct prompts seen during a run, by the reward they earned."""

from __future__ import annotations


class PromptQueue:
    """Keeps the `size` best distinct prompt texts. A prompt offered again keeps its best
    reward, so a lucky batch cannot be overwritten by a later unlucky one and vice versa.
    Ties go to the earlier prompt (stable), not the shorter one (REFERENCE §4.5 quirk)."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[dict] = []  # sorted by reward, best first

    def offer(self, prompt: str, reward: float, step: int) -> None:
        for item in self.items:
            if item["prompt"] == prompt:
                if reward > item["reward"]:
                    item.update(reward=reward, step=step)
                    self.items.sort(key=lambda x: -x["reward"])
                return
        self.items.append({"prompt": prompt, "reward": reward, "step": step})
        self.items.sort(key=lambda x: -x["reward"])
        del self.items[self.size:]

    @property
    def prompts(self) -> list[str]:
        return [item["prompt"] for item in self.items]

    def state_dict(self) -> dict:
        return {"size": self.size, "items": [dict(i) for i in self.items]}

    def load_state_dict(self, state: dict) -> None:
        self.size = state["size"]
        self.items = [dict(i) for i in state["items"]]
