"""An offline stand-in for a chat model: a tiny random Qwen3 (two layers, small widths, a Qwen-style chat template with
reasoning markers) written as a plain Hugging Face model folder or as a hub-cache entry, under any name.

    python -m container_src.synthetic_qwen --out data/qwen_model            # a plain folder, for channel `model`
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from pathlib import Path

from container_src.paths import hub_cache_entry
from container_src.synthetic import make_stories, train_tokenizer

logger = logging.getLogger(__name__)

# Qwen3's layout in short: each turn between <|im_start|>ROLE and <|im_end|>; the last assistant turn opens with an
# empty reasoning block (thinking off), as Qwen3's own template renders it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MARKERS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
MLP_WIDTH = 192
"""The width of ``blocks.N.mlp.hook_post`` (intermediate_size)."""


def write_qwen_folder(out: Path, seed: int = 0, corpus: list[str] | None = None) -> Path:
    """A random two-layer Qwen3 (d_model 64, d_mlp 192, 4 heads over 2 key-value heads) and its tokenizer, with a
    chat template, as ``save_pretrained`` writes them: config.json, model.safetensors, tokenizer files."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = train_tokenizer(corpus or make_stories(400, seed), 512)
    tokenizer.add_special_tokens({"additional_special_tokens": list(MARKERS)})  # type: ignore[arg-type]
    tokenizer.chat_template = CHAT_TEMPLATE
    special_id = tokenizer.get_vocab()["<|endoftext|>"]
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=special_id,
        eos_token_id=special_id,
    )
    model = Qwen3ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    logger.info("wrote random Qwen3 (%d params) to %s", model.num_parameters(), out)
    return out


def write_qwen_cache(hf_home: Path, name: str, seed: int = 0) -> Path:
    """The same model as a hub-cache entry for ``name`` under ``hf_home/hub``; returns the snapshot folder."""
    commit = hashlib.sha1(f"{name}:qwen3:{seed}".encode()).hexdigest()
    repo_dir = hf_home / "hub" / hub_cache_entry(name)
    snapshot = write_qwen_folder(repo_dir / "snapshots" / commit, seed)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    shutil.rmtree(args.out, ignore_errors=True)
    write_qwen_folder(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
