"""Each mode's typed configuration: its keys, their defaults and meaning, and the checks of their values.

One dataclass per mode (``SCHEMAS``), with a docstring under each field: ``--help`` and docs/configuration.md are
generated from them (``config_doc``). ``resolve`` merges a run's sources into one of them (lowest precedence first:
the defaults, a preset or ``--config FILE``, SageMaker's ``hyperparameters.json``, then ``--key value`` flags; how is in
``config_sources``); an unknown key, a bad value or an impossible combination raises :class:`ConfigError` naming the
key, before any model is loaded. Secrets never enter the config: ``wandb_key`` reads the W&B key from the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from container_src import schedule, train_checks

# looks_like_secret and read_json_object are re-exported: the launcher imports them from here.
from container_src.config_sources import ConfigError, check_types, merge
from container_src.config_sources import looks_like_secret as looks_like_secret
from container_src.config_sources import read_json_object as read_json_object
from container_src.model_shapes import SHAPES
from container_src.train_checks import ARCHITECTURES as ARCHITECTURES
from container_src.train_checks import PROMPT_FORMATS as PROMPT_FORMATS
from container_src.train_checks import refuse_unless as _need

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class RunConfig:
    """The keys every mode that runs the model shares."""

    seed: int = 42
    """Seed for weights, data mixing and shuffling."""
    control_path: str = "roneneldan/TinyStories"
    """The control text (the negative control): a hub dataset id, streamed when channel `control` is absent."""
    control_split: str = "train"
    """Split of the control text to train on (viz reads it too)."""
    control_text_column: str = "text"
    """Column of the control dataset that holds the text (hub dataset or channel)."""
    precision: str = "auto"
    """Numeric precision: `auto` (bf16 autocast where the GPU supports it, else fp32), `fp32` or `bf16`."""
    device: str = "auto"
    """Device to run on: `auto` (cuda when available), `cpu`, `cuda` or `cuda:N`."""

    def __post_init__(self) -> None:
        check_types(self)
        self._check_values()

    def _check_values(self) -> None:
        _need(self, self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        _need(
            self,
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            "must be auto, cpu, cuda or cuda:N",
        )
        _need(self, 0 <= self.seed < 2**32, "seed", "must be between 0 and 2**32 - 1")
        _need(self, bool(self.control_text_column), "control_text_column", "must name a column, such as text")


@dataclass
class TrainConfig(RunConfig):
    """Everything `train` needs. Field names follow SAE-Lens where SAE-Lens has one."""

    model_name: str = "roneneldan/TinyStories-33M"
    """TransformerLens architecture to load (a name on its list); its own weights unless `model_weights` is set."""
    model_weights: str = ""
    """Hugging Face id of the weights to load into `model_name`'s architecture; empty for `model_name`'s own.

    A `model` channel holding a plain model folder (config.json, safetensors, tokenizer) supplies the weights
    itself; a hub-cache channel must hold this id. Their config.json is checked against the architecture first."""
    prompt_format: str = "auto"
    """How prompts are rendered: `chat` (the tokenizer's chat template), `plain`, or `auto` (chat where it has one).

    Chat renders the question as the user turn and the response as the assistant turn; viz renders the same way."""
    chat_thought: bool = False
    """Render each prompt's `thought` column inside `reasoning_markers` before the response (chat format only)."""
    reasoning_markers: str = "<think>,</think>"
    """The model's reasoning markers, opening and closing, comma-separated."""
    hook_name: str = "blocks.2.mlp.hook_post"
    """TransformerLens hook to train on. Its width (d_in) is read from the model, never configured."""
    architecture: str = "topk"
    """SAE architecture: `topk` or `batchtopk`."""
    expansion_factor: int = 8
    """d_sae = expansion_factor × d_in, unless d_sae is given."""
    d_sae: int | None = None
    """Explicit dictionary size; overrides expansion_factor."""
    k: int = 64
    """Active latents per token (per token on average for batchtopk)."""
    lr: float = 1e-4
    """Adam learning rate."""
    lr_warm_up_fraction: float = 0.05
    """Share of the training steps spent warming the learning rate up from zero."""
    lr_decay_fraction: float = 0.2
    """Share of the training steps, at the end, over which the learning rate decays to zero."""
    lr_scheduler_name: str = "constant"
    """Learning-rate schedule between warm-up and decay (SAE-Lens's choices).

    `constant`, `cosineannealing` (to `lr_end`) or `cosineannealingwarmrestarts`."""
    lr_end: float | None = None
    """Learning rate the cosine schedules anneal to, where the final decay starts; when empty, lr / 10 (SAE-Lens).

    The constant schedule ignores it. With `lr_decay_fraction` above 0 a cosine schedule needs it above 0."""
    apply_b_dec_to_input: bool = False
    """Subtract the decoder bias from the SAE's input before encoding (SAE-Lens's option); the seed keeps it off."""
    exclude_special_tokens: bool = True
    """Leave the special tokens (BOS, EOS, padding) out of training and evaluation; false keeps them.

    The tokenizer's structural special tokens, as SAE-Lens finds them: BOS opens every packed row and separates
    the documents in it, often with outsized activations. `viz` statistics always leave BOS and padding out."""
    training_tokens: int = 204_800_000
    """Tokens to train on: 50,000 steps of 4096 in the seed plan."""
    train_batch_size_tokens: int = 4096
    """Tokens per optimiser step."""
    context_size: int = 512
    """Tokens per sequence fed to the model. Must not exceed the model's context."""
    n_batches_in_buffer: int = 512
    """Size of SAE-Lens's shuffling buffer, in sequences of `context_size` tokens (despite the name): 262,144 tokens.

    SAE-Lens 6.54 holds ``n_batches_in_buffer × context_size`` tokens, shuffles them at each refill and keeps half.
    The seed's 16 counted batches of 32 sequences (older SAE-Lens): 512 here. Under 64 a warning says why."""
    store_batch_size_prompts: int = 16
    """Sequences per model forward pass when filling the buffer."""
    n_checkpoints: int = 5
    """Periodic checkpoints over the run (the final SAE is saved separately)."""
    prompt_ratio: float = 0.1
    """Share of documents drawn from the prompts channel (cycled); the rest are the control text."""
    compile_sae: bool | None = None
    """Compile the SAE's training forward pass with torch.compile; when empty, on for a CUDA device, off on CPU.

    When empty it is on only where Triton finds a C compiler (the image has gcc), and a compile that fails then runs
    the step eagerly. Compiling takes some seconds at the start of the run."""
    prefetch_llm_batches: int = 2
    """Training batches prepared ahead in a background thread, overlapping the SAE step; 0 turns it off.

    The thread tokenises, runs the model's forward pass and fills the shuffling buffer. The data and its order are
    unchanged; a checkpoint's data position includes the batches prepared ahead, which a resumed run skips."""
    data_worker: bool = True
    """Read, tokenise and pack the training stream in a process of its own; false does it in the training process.

    The worker hands the rows back in order, so the rows are the same; the training process then spends neither its
    interpreter lock nor its cores on them. An error in the worker fails the run with that error, and the worker ends
    with the training process, even when that is killed."""
    lean_step: bool = True
    """Train with our SAE step (container_src/sae_step.py); false runs SAE-Lens's own step and Adam.

    Ours uses Adam's fused kernel, and for `topk` a training forward pass with less dense work. The loss and the
    updates are SAE-Lens's, to rounding."""
    fused_lm: bool = True
    """Run the model through torch's fused kernels (container_src/fused.py); false runs TransformerLens's own code.

    The attention, layer norms and MLP activation are fused: no [batch, head, query, key] tensors are written, and
    each norm and GELU is one kernel instead of several. The activations are TransformerLens's, to rounding."""
    dead_feature_window: int = 1000
    """Steps without firing after which a latent counts as dead."""
    feature_sampling_window: int = 2000
    """Steps between resets of the firing-frequency statistics."""
    log_every: int = 50
    """Steps between metric lines, W&B points and the curves' points (W&B's log frequency)."""
    eval_every_n_wandb_logs: int | None = None
    """Metric lines between evaluations during training; when empty, about 100 evaluations over the run.

    Each evaluation (CE-loss score, feature sparsity) runs with or without W&B; SAE-Lens's own default is every 100
    metric lines, about 10 evaluations over the seed's run."""
    eval_batches: int = 10
    """Batches of `store_batch_size_prompts` sequences used for the final evaluation."""
    control_eval_split: str = "validation"
    """Split of the control text the evaluations read, held out from training.

    The evaluations are the final one and W&B's during training. A `control` channel must have this split (a
    saved DatasetDict's split, or files named for it). The value of `control_split` evaluates on training
    stories instead, with a warning. The final evaluation also reports the training prompts and the held-out
    prompts (`heldout_prompt_fraction`) separately."""
    log_to_wandb: bool = True
    """Log to W&B; offline (files under the output dir) when no key is available."""
    wandb_project: str = "sae_tinystories"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user); the key's default when empty."""
    run_name: str | None = None
    """Run name for W&B and the checkpoints; derived from the config when empty."""
    saes: str = ""
    """SAEs to train together on one forward pass of the model, as a JSON list of objects; empty trains one SAE.

    Each object sets any of `name`, `architecture`, `k`, `expansion_factor`, `d_sae` and `hook_name`; every other
    key is shared. Example: `[{"k": 32}, {"k": 64, "expansion_factor": 16, "name": "wide"}]`. Each SAE is written to
    model/NAME/ as a single run writes model/. `compile_sae` cannot be on; see docs/train.md."""
    heldout_prompt_fraction: float = 0.1
    """Share of each category's prompts held out from training, for viz and the final evaluation; 0 trains on all.

    The split is seeded by `seed` and made per category (rounded), and its ids are written beside the SAE
    (heldout_prompts.json). A fraction that leaves a category without training prompts is refused before any
    training; 0, or a fraction too small to hold out any prompt, trains on every prompt, with a warning that viz
    and the final evaluation then have no held-out prompts."""

    def _check_values(self) -> None:
        super()._check_values()
        train_checks.check(self)

    @property
    def evaluation_every(self) -> int:
        """Metric lines between evaluations: ``eval_every_n_wandb_logs``, or about 100 evaluations over the run."""
        return schedule.evaluation_every(self)

    @property
    def training_steps(self) -> int:
        return self.training_tokens // self.train_batch_size_tokens

    @property
    def lr_warm_up_steps(self) -> int:
        return int(self.training_steps * self.lr_warm_up_fraction)

    @property
    def lr_decay_steps(self) -> int:
        return int(self.training_steps * self.lr_decay_fraction)

    def sae_width(self, d_in: int) -> int:
        """d_sae for a hook of width d_in; refuses a k the dictionary cannot hold."""
        d_sae = self.d_sae or self.expansion_factor * d_in
        if self.k > d_sae:
            raise ConfigError(f"k={self.k}: must not exceed d_sae={d_sae}")
        return d_sae


PROMPT_SETS = ("heldout", "train", "all")


@dataclass
class VizConfig(RunConfig):
    """Everything `viz` needs. The model and hook come from the SAE's own metadata."""

    n_features: int = 50
    """Dashboards for this many features, the most prompt-specific first."""
    features: str = ""
    """Feature ids to render as well, comma-separated (for example `12,873`)."""
    prompt_tokens: int = 100_000
    """At most this many prompt tokens are run (each prompt once, in a seeded random order)."""
    story_tokens: int = 200_000
    """Control-text tokens to run, the negative control."""
    context_size: int | None = None
    """Tokens per sequence; the SAE's training context when empty."""
    batch_size: int = 16
    """Sequences per forward pass."""
    top_snippets: int = 3
    """Top-activating prompt snippets listed per feature in features.csv and features.json."""
    model_name: str | None = None
    """Model to load; the one named in the SAE's metadata when empty."""
    model_weights: str | None = None
    """Weights to load into `model_name`'s architecture; those in the SAE's metadata when empty (`model_weights`)."""
    prompt_set: str = "heldout"
    """Which prompts viz reads: `heldout` (those train held out), `train` (those it trained on) or `all`.

    Read from heldout_prompts.json beside the SAE; an SAE without one, or with nothing held out, is read on all
    prompts, with a warning.
    """
    contrasts: str = ""
    """Contrasts of your own, scored beside the default ones: `NAME: SELECTION vs SELECTION`, separated by `;`.

    A selection is space-separated terms: `COLUMN=V1,V2` or `COLUMN!=V1,V2` on any column of the prompts (quote a
    term whose value has a space: `"category=official narrative"`), `part=question|response|prompt` (default
    prompt), or the single term `stories` (second side only). Example:
    `refusal_resp: category=refusal part=response vs category!=refusal part=response; q: part=question vs stories`.
    """
    ablate_top: int = 20
    """The top this-many features of each contrast are ablated: their effect on the next-token loss, per side."""
    min_prompts: int = 5
    """A contrast with a side of fewer prompts (story documents for stories) is skipped; summary.json says why."""

    def _check_values(self) -> None:
        super()._check_values()
        from container_src.contrasts import parse

        _need(self, self.prompt_set in PROMPT_SETS, "prompt_set", f"must be one of {', '.join(PROMPT_SETS)}")
        _need(self, self.min_prompts >= 1, "min_prompts", "must be at least 1")
        parse(self.contrasts)  # a syntax error fails before anything is read
        for key in ("n_features", "top_snippets", "ablate_top"):
            _need(self, getattr(self, key) >= 0, key, "must not be negative")
        for key in ("prompt_tokens", "story_tokens", "batch_size"):
            _need(self, getattr(self, key) >= 1, key, "must be at least 1")
        _need(self, self.context_size is None or self.context_size >= 2, "context_size", "must be at least 2")
        self.feature_ids  # noqa: B018 - parse now, so a bad list fails before any model is loaded

    @property
    def feature_ids(self) -> list[int]:
        ids = []
        for part in self.features.replace(" ", "").split(","):
            if not part:
                continue
            if not (part.isascii() and part.isdigit()):
                raise ConfigError(f"features={self.features!r}: {part!r} is not a feature id; give ids like 12,873")
            ids.append(int(part))
        return ids


@dataclass
class BenchConfig(TrainConfig):
    """Everything `bench` needs: train's keys (the configuration whose speed is measured) and the benchmark's own.

    The model is a random one of ``model_shape`` written to a temporary folder, so nothing is downloaded and no
    channel is read; ``training_tokens`` only sizes the projected wall time and cost.
    """

    steps: int | None = None
    """Training steps per pipeline after the warm-up; when empty, 200 on a GPU and 8 on CPU, or two buffer refills.

    The timed window is whole buffer refills among them: when empty, at least two refills' steps (64 with the seed's
    buffer of 512 sequences and batches of 4096 tokens)."""
    warmup_steps: int | None = None
    """Untimed steps before the timed ones (buffer fill, compilation, allocator); when empty, 20 on GPU, 2 on CPU."""
    lm_batches: int = 5
    """Model batches (`store_batch_size_prompts` sequences each) timed for the model-only throughput."""
    model_shape: str = "tinystories-33m"
    """Shape of the random stand-in model: `tinystories-33m` (the real model's shape, so its speed) or `tiny`."""
    bare: bool = True
    """Also run bare SAE-Lens with its own default configuration on the same SAE size, and report the ratio."""
    tuned: bool = True
    """Also run SAE-Lens's runner with its best settings here (ours' batch and buffer, bf16 autocast and compile).

    Autocast where the device has bf16, the SAE compiled where train compiles it; reports ours / tuned."""
    sparsify: bool = True
    """Also train a TopK SAE of the same size, k and batch with EleutherAI's sparsify, and report ours / sparsify."""
    repeats: int = 1
    """Run each pipeline this many times, alternating, and report the fastest of each (steadier on a busy machine)."""
    instance_type: str = ""
    """SageMaker instance type for the cost projection; in a SageMaker job, the job's own when empty."""
    json: str | None = None
    """Also write the figures to this JSON file."""
    profile: str | None = None
    """Also run ours once more under torch.profiler and write its operator table to this file.

    The profiled run covers the steps after the warm-up; the figures come from the runs without the profiler."""

    def _check_values(self) -> None:
        super()._check_values()
        _need(self, self.steps is None or self.steps >= 1, "steps", "must be at least 1")
        _need(
            self,
            self.warmup_steps is None or self.warmup_steps >= 1,
            "warmup_steps",
            "must be at least 1: the first step fills the activation buffer, and the timing starts after a step",
        )
        _need(self, self.lm_batches >= 1, "lm_batches", "must be at least 1")
        _need(self, self.repeats >= 1, "repeats", "must be at least 1")
        _need(self, self.model_shape in SHAPES, "model_shape", f"must be one of {', '.join(SHAPES)}")
        _need(self, self.json is None or bool(self.json.strip()), "json", "must be a file path")
        _need(self, self.profile is None or bool(self.profile.strip()), "profile", "must be a file path")


# Each mode's schema, by mode name: the container's mode table, which the launcher checks its requests against.
SCHEMAS: dict[str, type[RunConfig]] = {"train": TrainConfig, "viz": VizConfig, "bench": BenchConfig}

C = TypeVar("C", bound=RunConfig)


@dataclass
class Resolved(Generic[C]):
    """A merged config with the source of every value, as written to resolved_config.json."""

    config: C
    sources: dict[str, str] = field(default_factory=dict)
    mode: str = "train"
    layers: list[str] = field(default_factory=list)
    """The sources that were present, lowest precedence first."""

    def to_json(self, derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
        values = dataclasses.asdict(self.config)
        return {
            "mode": self.mode,
            "layers": ["default", *self.layers],
            "values": values,
            "sources": {k: self.sources.get(k, "default") for k in values},
            "derived": dict(derived or {}),
        }


def resolve(
    hyperparameters: Mapping[str, Any] | None = None,
    cli: Mapping[str, str] | None = None,
    schema: type[C] = TrainConfig,
    shared_tree: bool = False,
) -> Resolved[C]:
    """Merge defaults < preset/--config < hyperparameters < CLI into a checked ``schema`` (one mode's config).

    With ``shared_tree`` (the container outside a job: a local tree's hyperparameters.json is read by every mode
    run on it), keys of another mode in the hyperparameters or their preset are left to that mode, with a warning;
    otherwise (flags, a config file, a job's own hyperparameters, the launcher's check of them) they are an
    error.
    """
    values, sources, layers = merge(hyperparameters, cli, schema, SCHEMAS, shared_tree)
    return Resolved(config=schema(**values), sources=sources, layers=layers)
