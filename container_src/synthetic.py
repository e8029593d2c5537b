"""Offline stand-ins for the hub: a random GPT-Neo laid out as an HF hub-cache entry, and a tiny story set.

The hub cannot always be reached (network-isolated jobs, CI, a laptop on a plane). A model written here loads through
the unchanged ``HookedTransformer.from_pretrained(model_name)`` call when ``HF_HOME`` points at the cache and the hub
is off, so the real loading code runs. Tests, ``make smoke`` and ``bench`` use it; a user ships real weights to a job
in exactly the same layout (channel ``model``).

    python -m container_src.synthetic --out data/opt_ml/input/data   # writes model/ and control/
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
from pathlib import Path

from container_src.model_shapes import SHAPES
from container_src.paths import hub_cache_entry

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "roneneldan/TinyStories-33M"
_TOKENIZER_VOCAB = 512  # a BPE this small trains in a second on a few hundred stories

_NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim"]
_ANIMALS = ["dog", "cat", "bird", "frog", "bunny", "duck", "fox", "bear"]
_PLACES = ["park", "garden", "forest", "beach", "farm", "house", "river", "hill"]
_THINGS = ["ball", "kite", "toy car", "red hat", "big box", "shiny stone", "blue cup", "little boat"]
_FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "curious", "kind"]


def make_stories(n: int, seed: int = 0) -> list[str]:
    """Short TinyStories-like texts, deterministic under ``seed``: simple words, one small plot each."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name, friend = rng.sample(_NAMES, 2)
        animal, place, thing = rng.choice(_ANIMALS), rng.choice(_PLACES), rng.choice(_THINGS)
        feel, feel2 = rng.sample(_FEELINGS, 2)
        stories.append(
            f"Once upon a time, there was a little {animal} named {name}. {name} lived near the {place}. "
            f"One day, {name} found a {thing}. {name} was very {feel}. "
            f'{name} showed the {thing} to {friend}. {friend} said, "Can we play with it together?" '
            f"They played all day at the {place}. At the end of the day, {name} felt {feel2} and went home."
        )
    return stories


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer wrapped for transformers; GPT-2 style, with <|endoftext|> as bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=2048,
    )


def write_model_cache(
    cache_dir: Path,
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    shape: str = "tiny",
    seed: int = 0,
    corpus: list[str] | None = None,
) -> Path:
    """Write a random GPT-Neo of ``shape`` (global/local attention, window 256, gelu_new, like TinyStories-33M) as
    a hub-cache entry.

    ``cache_dir`` plays the role of ``$HF_HOME``: the files land in ``cache_dir/hub/models--org--name/``.
    Returns the snapshot folder.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {', '.join(SHAPES)}")
    sizes = SHAPES[shape]
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tokenizer = train_tokenizer(corpus or make_stories(400, seed), _TOKENIZER_VOCAB)
    torch.manual_seed(seed)
    special_id = tokenizer.get_vocab()["<|endoftext|>"]
    config = GPTNeoConfig(
        vocab_size=sizes.vocab_size or len(tokenizer),
        hidden_size=sizes.hidden_size,
        num_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        attention_types=[[["global", "local"], sizes.num_layers // 2]],
        window_size=256,
        max_position_embeddings=sizes.max_position_embeddings,
        activation_function="gelu_new",
        bos_token_id=special_id,
        eos_token_id=special_id,
    )
    model = GPTNeoForCausalLM(config)
    commit = hashlib.sha1(f"{model_name}:{shape}:{seed}".encode()).hexdigest()
    repo_dir = Path(cache_dir) / "hub" / hub_cache_entry(model_name)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(snapshot, safe_serialization=True)
    tokenizer.save_pretrained(snapshot)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    logger.info("wrote random GPT-Neo (%d params) for %s to %s", model.num_parameters(), model_name, snapshot)
    return snapshot


def write_story_dataset(out_dir: Path, n: int = 400, seed: int = 0, validation: int = 100) -> Path:
    """A local TinyStories stand-in in ``save_to_disk`` layout with the real dataset's ``text`` column: splits
    train (``n`` stories) and validation (``validation`` other ones), or one Dataset of ``n`` when that is 0."""
    from datasets import Dataset, DatasetDict

    stories = make_stories(n + validation, seed)
    train = Dataset.from_dict({"text": stories[:n]})
    saved = DatasetDict(train=train, validation=Dataset.from_dict({"text": stories[n:]})) if validation else train
    saved.save_to_disk(str(out_dir))
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="channel root: model/ and control/ go below it")
    parser.add_argument("--stories", type=int, default=400)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model size (default: tiny)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stories = make_stories(args.stories)
    write_model_cache(args.out / "model", shape=args.shape, corpus=stories)
    write_story_dataset(args.out / "control", n=args.stories)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
