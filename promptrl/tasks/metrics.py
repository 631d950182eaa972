"""Answer metrics of the generation tasks (instruction induction, BIG-Bench generation).

The normalisation is APE's and StablePrompt's (REFERENCE §6.2), so numbers compare with theirs:
the first line, the text before its first ".", lower case, "-" read as a space, punctuation and
the word "and" dropped, and the "Sentence 1:/2:" markers of the two-sentence tasks removed. A
prediction is scored against every gold answer of its example and gets the best of them.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.replace(" and ", " ").replace("Sentence 1:", " ").replace("Sentence 2:", " ")
    text = text.strip().split("\n")[0].split(".")[0].lower().replace("-", " ")
    return " ".join(text.translate(_PUNCTUATION).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_set(prediction: str, gold: str) -> float:
    """Same words in any order (lists such as "the animals in the input")."""
    return float(set(normalize(prediction).split()) == set(normalize(gold).split()))


def contains(prediction: str, gold: str) -> float:
    """The gold answer appears as whole words somewhere in the prediction."""
    ref = normalize(gold)
    return float(bool(ref) and re.search(rf"\b{re.escape(ref)}\b", normalize(prediction)) is not None)


METRICS = {"em": exact_match, "f1": f1, "exact_set": exact_set, "contains": contains}


def score_answer(metric: str, prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """The best score of `prediction` against any of the gold `answers`."""
    fn = METRICS[metric]
    return max((fn(prediction, a) for a in answers), default=0.0)
