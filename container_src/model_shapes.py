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
