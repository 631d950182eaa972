"""Every text the agent reads: meta-prompts, answer prefixes, and how queries are put together.

The config defaults (promptrl/config.py) point here, so a run's YAML can still override any of
these; this module must not import config.py (config.py imports it).
"""

from __future__ import annotations

from promptrl.errors import UserError
from promptrl.tasks import Example, Task

# --- StablePrompt's forward generation (also APE's proposal template) --------------------------
# Figure 6's text, without the 24-space runs the authors' triple-quoted strings carried (REFERENCE §2.2).
FORWARD_META_PROMPT = (
    "I gave a friend an instruction and five inputs.\n"
    "The friend read the instruction and wrote an output for every one of the inputs.\n"
    "Here are the input-output pairs:\n"
)
FORWARD_PREFIX = "The instruction was :"

# --- TTE: one instruction per input (REFERENCE §5) ---------------------------------------------
TTE_META_PROMPT = (
    "Look at the instruction and current input,\n"
    "rewrite instruction for current input.\n"
    "Here are the input-output pairs:\n"
)
TTE_PREFIX = "The Rewritten instruction was :"
TTE_CURRENT_INPUT = "Current Input Here :"

# --- APE's iterative resampling: a paraphrase of a top candidate -------------------------------
APE_RESAMPLE_TEMPLATE = (
    "Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
    "Input: {instruction}"
)
APE_RESAMPLE_PREFIX = "Output:"

# --- OPRO (Yang et al., 2024) ------------------------------------------------------------------
OPRO_HEADER = ("Your task is to generate the instruction <INS>. Below are some previous instructions with their scores. "
               "The score ranges from 0 to 100.\n")
OPRO_PROBLEMS = "Below are some problems.\n"
OPRO_FOOTER = ("Generate an instruction that is different from all the instructions <INS> above, and has a higher score "
               "than all the instructions <INS> above. The instruction should begin with <INS> and end with </INS>. "
               "The instruction should be concise, effective, and generally applicable to all problems above.")
# The open assistant turn starts with the tag and the text is cut at the closing one, so even a
# small agent that ignores the format produces a usable instruction.
OPRO_PREFIX = "<INS>"
OPRO_END = "</INS>"


def format_demos(task: Task, examples: list[Example]) -> str:
    return "".join(f"Input: {ex.text}\nOutput: {task.demo_output(ex)}\n\n" for ex in examples)


def user_message(meta_prompt: str, demos: str) -> str:
    return f"{meta_prompt.rstrip()}\n\n{demos.rstrip()}"


def tte_message(meta_prompt: str, demos: str, current_input_label: str, text: str) -> str:
    return f"{user_message(meta_prompt, demos)}\n\n{current_input_label} {text}"


def opro_shown(history: list[dict], max_history: int) -> list[dict]:
    """The history entries OPRO's meta-prompt shows, in its order: the `max_history` best, worst
    first so the best sits next to the request."""
    best = sorted(history, key=lambda h: (h["score"], -h["order"]), reverse=True)[:max_history]
    return sorted(best, key=lambda h: (h["score"], -h["order"]))


def opro_meta_prompt(history: list[dict], task: Task, exemplars: list[Example], max_history: int) -> str:
    """OPRO's meta-prompt: the instructions `opro_shown` picks with their scores, then exemplars
    rendered with the task template and <INS> in place."""
    lines = [OPRO_HEADER]
    for h in opro_shown(history, max_history):
        lines.append(f"text:\n{h['prompt']}\nscore:\n{h['score']}\n")
    if exemplars:
        lines.append(OPRO_PROBLEMS)
        lines.extend(opro_exemplar(task, ex) for ex in exemplars)
    lines.append(OPRO_FOOTER)
    return "\n".join(lines)


def opro_exemplar(task: Task, ex: Example) -> str:
    """One exemplar as OPRO's meta-prompt shows it: the task template with <INS> in place."""
    return f"input:\n{task.render(OPRO_PREFIX, ex.text)}\noutput:\n{task.demo_output(ex)}\n"


def extract_instruction(text: str, end_tag: str) -> str:
    return text.split(end_tag, 1)[0].replace(OPRO_PREFIX, "").strip()


def build_query_text(tokenizer, user: str, prefix: str, no_chat_template: str) -> str:
    """`user` (e.g. meta-prompt + demonstrations) as the user turn, and an *open* assistant turn
    that already holds `prefix`, so the agent continues it (REFERENCE §2.3, intended form)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": prefix}],
            tokenize=False, continue_final_message=True,
        )
    if no_chat_template == "plain":
        return f"{user}\n\n{prefix}"
    raise UserError(
        "the agent's tokenizer has no chat template; use an instruct model, or set "
        "agent.no_chat_template=plain to send the meta-prompt as plain text"
    )
