"""The sizes of the random GPT-Neo stand-ins that ``bench``, ``make smoke`` and the tests build (pure data).

Both the bench mode's configuration (which shapes ``model_shape`` accepts) and ``synthetic`` (which builds them) read
this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a GPT-Neo. TransformerLens gives it d_mlp = 4 × hidden_size, the width of ``mlp.hook_post``."""

    hidden_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    vocab_size: int | None = None
    """None: the size of the locally trained tokenizer's vocabulary."""


SHAPES = {
    # Builds in seconds; mlp.hook_post is 256 wide.
    "tiny": ModelShape(hidden_size=64, num_layers=4, num_heads=4, max_position_embeddings=512),
    # roneneldan/TinyStories-33M's published config: the same matrices, so the same speed. Only token ids below the
    # local tokenizer's vocabulary occur, which changes no matrix size.
    "tinystories-33m": ModelShape(
        hidden_size=768, num_layers=4, num_heads=16, max_position_embeddings=2048, vocab_size=50257
    ),
}


@dataclass(frozen=True)
class Architecture:
    """The sizes of a published model, as its config.json gives them: what `weights` checks a run's weights
    against, and what `sizing` estimates the memory of, with no network and no weights at hand."""

    model_type: str
    layers: int
    d_model: int
    d_mlp: int
    heads: int
    kv_heads: int
    vocab: int
    dtype_bytes: int
    """Bytes per weight in the published dtype (bf16: 2, fp32: 4)."""
    head_dim: int = 0
    """Width of one attention head; 0: d_model / heads."""
    learned_positions: int = 0
    """Positions with a learned embedding (GPT-Neo, GPT-2: the context length); 0 for rotary positions."""


ARCHITECTURES = {
    # the published config.json of each (Hugging Face hub)
    "Qwen/Qwen3-8B": Architecture("qwen3", 36, 4096, 12288, 32, 8, 151936, 2, 128),
    "Qwen/Qwen3-0.6B": Architecture("qwen3", 28, 1024, 3072, 16, 8, 151936, 2, 128),
    "roneneldan/TinyStories-33M": Architecture("gpt_neo", 4, 768, 3072, 16, 16, 50257, 4, learned_positions=2048),
}

FAMILIES = {
    # TransformerLens name prefix -> the model_type of every model under it, for an architecture not in the table
    "Qwen/Qwen3-": "qwen3",
    "Qwen/Qwen2.5-": "qwen2",
    "Qwen/Qwen2-": "qwen2",
    "roneneldan/TinyStories-": "gpt_neo",
    "EleutherAI/gpt-neo-": "gpt_neo",
    "EleutherAI/pythia-": "gpt_neox",
    "meta-llama/": "llama",
    "gpt2": "gpt2",
    "google/gemma-2-": "gemma2",
}
