"""Write conf/task/ configs of the instruction-induction, BIG-Bench II and MMLU families, and the
paper experiments that sweep them (conf/experiment/paper_ii.yaml, paper_mmlu.yaml).

One YAML per task, so `task=ii_antonyms` or `task=mmlu_anatomy` composes like any hand-written
task; rerun after changing a family's shared settings here. Data for II comes from APE's
`induce`/`execute` files, for BBII from BIG-bench `task.json` files, for MMLU from the hub.

    python scripts/make_task_configs.py

tests/test_config.py checks that its output equals the committed files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parent.parent / "conf" / "task"

# REFERENCE §6.2: the 24 tasks in the authors' run order, with the task metric (default EM)
# and the first APE human annotation of each (APE's data/instruction_induction/annotations).
II_TASKS = {
    "antonyms": ("em", "Write a word that means the opposite of the input word"),
    "word_in_context": ("em", 'Given two sentences and a common word, output "same" if the common word has the same meaning in both sentences, and "not the same" otherwise.'),
    "rhymes": ("em", "Write a word that rhymes with the input word"),
    "num_to_verbal": ("em", "Write the number in English words"),
    "cause_and_effect": ("em", "Each input consists of two sentences, where one is the cause and the other is the outcome. Write The cause sentence"),
    "larger_animal": ("em", "Write the bigger animal of the two"),
    "second_word_letter": ("em", "Extract the second letter from the input word"),
    "taxonomy_animal": ("exact_set", "Extract all animals from the input list"),
    "negation": ("em", "Negate the given sentence"),
    "common_concept": ("f1", "Find a common characteristic for the following list of objects"),
    "diff": ("em", "Subtract the second number of the input from the first number of the input"),
    "translation_en-es": ("em", "Translate the word to Spanish"),
    "orthography_starts_with": ("exact_set", "Write all the words of the input that start with the letter in the square brackets"),
    "sentiment": ("em", "Output whether the sentiment of the input sentence is positive or negative."),
    "informal_to_formal": ("f1", "Rephrase the following sentence in a formal tone"),
    "sum": ("em", "Write the sum of the two numbers"),
    "singular_to_plural": ("em", "Write the plural form of the word"),
    "active_to_passive": ("em", "Rewrite the input sentence in passive form"),
    "translation_en-de": ("em", "Translate the word to German"),
    "sentence_similarity": ("em", "Rate from 0 (definitely not) to 5 (perfectly) the degree in which both sentences describe the same event."),
    "translation_en-fr": ("em", "Translate the word into French"),
    "letters_list": ("em", "Write the input word, but with a space between each one of its letters"),
    "first_word_letter": ("em", "Extract the first letter from the input word"),
    "synonyms": ("contains", "Write a word with a similar meaning"),
}
# Sentences need more room than words.
II_LONG_ANSWERS = {"active_to_passive", "negation", "informal_to_formal", "cause_and_effect"}
II_URL = "https://raw.githubusercontent.com/keirp/automatic_prompt_engineer/main/experiments/data/instruction_induction/raw/{split}/{task}.json"

# REFERENCE §6.2: the 20 tasks of the authors' run_BBII.sh.
BBII_CHOICE = ["causal_judgment", "disambiguation_qa", "epistemic_reasoning", "hyperbaton", "implicatures",
               "logical_fallacy_detection", "movie_recommendation", "navigate", "presuppositions_as_nli",
               "ruin_names", "snarks", "sports_understanding", "winowhy"]
BBII_GENERATION = ["dyck_languages", "gender_inclusive_sentences_german", "object_counting", "operators", "tense",
                   "word_sorting", "linguistics_puzzles"]

# REFERENCE §6.3: the subject groups of the paper's Table 13.
MMLU = {
    "STEM": ["abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"],
    "Social Sciences": ["econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"],
    "Humanities": ["formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"],
    "Other": ["business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
              "professional_accounting", "professional_medicine", "virology"],
}
LETTERS = [" A", " B", " C", " D"]
QA_TEMPLATE = "{prompt}\nQuestion : {input}\nOutput :"
QA_MANUAL = "Answer the multiple-choice question with the letter of the correct choice."
GEN_TEMPLATE = "{prompt}\nInput : {input}\nOutput :"


def _quote_multiline(dumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)


yaml.SafeDumper.add_representer(str, _quote_multiline)


def write(conf: Path, name: str, header: str, body: dict, extends: str | None = None) -> None:
    """conf/task/<name>.yaml; with `extends`, Hydra's config extension: the file starts from that
    task's config and sets only what differs."""
    text = "\n".join(f"# {line}" for line in header.splitlines()) + "\n"
    if extends:
        text += f"defaults:\n  - {extends}\n  - _self_\n\n"
    text += yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000)
    (conf / f"{name}.yaml").write_text(text, encoding="utf-8")


def main(conf: Path = CONF) -> None:
    """Write every generated task config into `conf` (conf/task/) and the experiments beside it."""
    note = "Generated by scripts/make_task_configs.py; edit there."
    for task, (metric, annotation) in II_TASKS.items():
        write(conf, f"ii_{task}", f"Instruction induction: {task} (REFERENCE §6.2). {note}", {
            "name": f"ii_{task}", "kind": "generation", "loader": "instruction_induction", "source_task": task,
            "local_name": "instruction_induction", "data_url": II_URL, "template": GEN_TEMPLATE,
            "metric": metric, "reward_metric": "f1", "max_new_tokens": 48 if task in II_LONG_ANSWERS else 16,
            "manual_prompt": annotation, "category": "instruction_induction"})
    for task in BBII_CHOICE + BBII_GENERATION:
        choice = task in BBII_CHOICE
        body = {"name": f"bbii_{task}", "kind": "classification" if choice else "generation", "loader": "bigbench",
                "source_task": task, "local_name": "bigbench_ii",
                "template": "{prompt} Input : {input} Output :" if choice else GEN_TEMPLATE,
                "category": "bbii_classification" if choice else "bbii_generation"}
        if not choice:
            body.update(metric="em", reward_metric="f1", max_new_tokens=48)
        write(conf, f"bbii_{task}", f"BIG-Bench II: {task} ({'multiple choice, option letters' if choice else 'generation, exact match'}). "
              f"Label words come from the file; the manual prompt is its task_prefix. {note}", body)
    qa = {"kind": "classification", "loader": "mmlu", "hub_id": "cais/mmlu", "hub_train_split": "validation",
          "hub_test_split": "test", "template": QA_TEMPLATE, "label_words": LETTERS, "label_names": list("ABCD"),
          "manual_prompt": QA_MANUAL}
    write(conf, "mmlu", f"MMLU, all 57 subjects together (paper Table 4). {note}", {"name": "mmlu", **qa, "hub_config": "all", "category": "mmlu"})
    for group, subjects in MMLU.items():
        for subject in subjects:
            write(conf, f"mmlu_{subject}", f"MMLU {subject} ({group}): mmlu.yaml with one subject. {note}",
                  {"name": f"mmlu_{subject}", "hub_config": subject, "category": group}, extends="mmlu")
    write(conf, "openbookqa", f"OpenbookQA with its supporting fact as a hint (paper Table 4). {note}", {
        "name": "openbookqa", **qa, "loader": "openbookqa", "hub_id": "allenai/openbookqa", "hub_config": "additional",
        "category": "openbookqa"})
    write_experiments(conf.parent / "experiment")


# The paper-scale models, target backend and APPO settings come from paper_table1.yaml.
PAPER_SCALE = """defaults:
  - paper_table1
  - _self_

algo:
  epochs: 30  # QA and induction: 30 epochs (paper A.5)
{algo_extra}
checkpoint_every: 10

hydra:
  sweeper:
    params:
{params}
"""


def write_experiments(exp: Path) -> None:
    ii = ",".join(f"ii_{t}" for t in II_TASKS)
    bbii = ",".join(f"bbii_{t}" for t in BBII_CHOICE + BBII_GENERATION)
    (exp / "paper_ii.yaml").write_text(
        "# @package _global_\n"
        "# Paper Table 3 / Tables 10-11 at real scale (GPU): StablePrompt on the 24 instruction-induction\n"
        "# and 20 BIG-Bench II tasks x 3 seeds, agent and target Gemma-1.1-7B-it, target on vLLM.\n"
        "# Evaluation is on the held-out split (II: execute; BBII: after the first 30), not the last\n"
        "# training batch the authors' scripts used (REFERENCE §4.5). Generated by\n"
        "# scripts/make_task_configs.py.\n"
        "#   promptrl train -m experiment=paper_ii hydra/launcher=slurm\n"
        + PAPER_SCALE.format(algo_extra="", params=f"      task: {ii},{bbii}\n      seed: 0,1,2"))
    mmlu = ",".join(f"mmlu_{s}" for group in MMLU.values() for s in group)
    (exp / "paper_mmlu.yaml").write_text(
        "# @package _global_\n"
        "# Paper Table 4 / Table 13 at real scale (GPU): StablePrompt and TTE-StablePrompt on the 57 MMLU\n"
        "# subjects and OpenbookQA, agent and target Gemma-1.1-7B-it, target on vLLM. QA settings of the\n"
        "# authors' code: 3 demonstrations, 3 prompts per step. Group the report by subject area with\n"
        "#   promptrl report <sweep dir> --by task.category,algo.name\n"
        "# Generated by scripts/make_task_configs.py.\n"
        + PAPER_SCALE.format(
            algo_extra="  num_demos: 3\n  prompts_per_step: 3\n  meta_prompt: \"I gave a friend an instruction and three inputs.\\n"
                       "The friend read the instruction and wrote an output for every one of the inputs.\\n"
                       "Here are the input-output pairs:\\n\"\n",
            params=f"      task: {mmlu},openbookqa\n      algo: appo,tte\n      seed: 0"))


if __name__ == "__main__":
    main()
