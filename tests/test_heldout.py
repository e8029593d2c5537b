"""Held-out prompts in `train`: the split is made before anything heavy, no held-out prompt is ever trained on,
its ids are written beside the SAE, and the final evaluation reports each source by itself."""

from __future__ import annotations

import json
import random
import shutil
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from container_src.config import TrainConfig
from container_src.data import CountedRows, PackedRows, pack_documents
from container_src.paths import ContainerPaths
from container_src.prompts import HELDOUT_FILE, load_prompts, split_prompts
from container_src.synthetic import make_stories
from tests.conftest import SAMPLE_PROMPTS, TINY_RUN, run_container, write_hyperparameters

_GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
_CYRILLIC = "абвгдежзийклмнопрстуфхцчшщыэюя"


def _lettered(alphabet: str, i: int) -> str:
    """A text of letters of ``alphabet`` only, different for every ``i``."""
    words = [alphabet[(i * 7 + j * 3) % len(alphabet)] + alphabet[(i + j) % len(alphabet)] * 3 for j in range(12)]
    return f"{alphabet[i % len(alphabet)]}{i} " + " ".join(words)


def _tokenizer_and_config(tmp_path: Path) -> tuple[Any, Any]:
    from container_src.model import load_model, pick_runtime
    from container_src.runner import sae_lens_config

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    cfg = TrainConfig(context_size=64, train_batch_size_tokens=256, store_batch_size_prompts=4, training_tokens=256)
    runner_cfg = sae_lens_config(cfg, 256, 1024, pick_runtime("cpu", "auto"), "t", tmp_path / "r", tmp_path / "o", None)
    return lm, runner_cfg


def test_no_heldout_prompt_reaches_a_training_batch(
    tmp_path: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "never on the held-out prompts (a seeded share of each category)".
    The held-out prompts are written in Cyrillic, the training prompts in Greek, the stories in ASCII: the
    stream train builds, packed into rows as train packs it, cycles the Greek prompts several times and never
    carries a Cyrillic byte."""
    import torch

    from container_src.train import prepare_inputs

    categories = ["official"] * 30 + ["refusal"] * 10
    ids = [f"q{i}" for i in range(len(categories))]
    placeholder = Dataset.from_dict({"id": ids, "text": ["x"] * len(ids), "category": categories})
    # the split depends on the ids, the categories and the seed, never on the texts: the texts are chosen after it
    held = {ids[r] for r in split_prompts(placeholder, 0.25, seed=5).heldout_rows}
    assert len(held) == 11  # 7.5 of 30 and 2.5 of 10, rounded up: 8 and 3
    texts = [_lettered(_CYRILLIC if i in held else _GREEK, n) for n, i in enumerate(ids)]
    base = tmp_path / "opt_ml"
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    (channels / "model").symlink_to(tiny_assets["hf_home"], target_is_directory=True)
    (channels / "control").symlink_to(tiny_assets["stories"], target_is_directory=True)
    Dataset.from_dict({"id": ids, "text": texts, "category": categories}).save_to_disk(str(channels / "prompts"))

    cfg = TrainConfig(heldout_prompt_fraction=0.25, seed=5, prompt_ratio=0.5, log_to_wandb=False, device="cpu")
    inputs = prepare_inputs(cfg, ContainerPaths(base))
    assert inputs.split is not None and set(inputs.split.record["heldout_ids"]) == held

    lm, runner_cfg = _tokenizer_and_config(tmp_path)
    rows = torch.cat([row["input_ids"] for row in PackedRows(inputs.stream, lm, runner_cfg)])

    def byte_tokens(alphabet: str) -> set[int]:
        return {t for text in alphabet for t in lm.tokenizer(text, add_special_tokens=False)["input_ids"]}

    stories = " ".join(make_stories(400))
    only_heldout = byte_tokens(_CYRILLIC) - byte_tokens(_GREEK) - byte_tokens(stories)
    only_trained = byte_tokens(_GREEK) - byte_tokens(_CYRILLIC) - byte_tokens(stories)
    assert only_heldout and only_trained  # the letters' lead bytes: tokens of one side alone
    seen = set(rows.tolist())
    assert not seen & only_heldout, "a held-out prompt reached a training row"
    assert only_trained <= seen

    # every training prompt is in the rows, several times over (they cycle); no held-out one is
    stream_texts = [row["text"] for row in inputs.stream]
    trained_texts = [t for t, i in zip(texts, ids, strict=True) if i not in held]
    counts = [stream_texts.count(t) for t in trained_texts]
    assert min(counts) >= 3, counts
    assert not {t for t, i in zip(texts, ids, strict=True) if i in held} & set(stream_texts)


def test_counted_rows_count_the_documents_in_the_rows_served(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    """docs/train.md: "each source says how many distinct prompts or stories it covered".
    What an evaluation says it covered: the documents with tokens in the rows it read, checked against the
    packer that records each token's document (a row whose last place holds a separator included)."""
    lm, runner_cfg = _tokenizer_and_config(tmp_path)
    rng = random.Random(0)  # lengths under which rows 12 and 24 end with a separator (seen)
    texts = [" ".join(["word"] * rng.randint(1, 40)) for _ in range(80)]
    tokens, docs = pack_documents(lm.tokenizer, texts, 64, max_tokens=10**6)
    separator_last = 0
    for n_rows in range(1, 30):
        rows = CountedRows([{"text": t} for t in texts], lm, runner_cfg)
        served = [row["input_ids"] for row in islice(rows, n_rows)]
        assert all(bool((a == b).all()) for a, b in zip(served, tokens, strict=False))  # the same packing
        truth = len({int(d) for d in docs[:n_rows].flatten() if d >= 0})
        assert rows.documents_covered == truth, n_rows
        separator_last += int(docs[n_rows - 1, -1]) == -1
    assert separator_last > 0  # the case where the next document starts only in the next row was met


def test_fraction_zero_trains_on_every_prompt_and_says_so(opt_ml: Path) -> None:
    """docs/train.md: "0, or a fraction too small to hold out any prompt, trains on every prompt with a warning"."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096", "heldout_prompt_fraction": "0"})
    result = run_container(opt_ml, "train")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "heldout_prompt_fraction=0: every prompt is trained on" in result.stdout
    assert "prompts: 95, 95 trained on, 0 held out" in result.stdout
    record = json.loads((opt_ml / "model" / HELDOUT_FILE).read_text())
    assert record["heldout_ids"] == [] and record["fraction"] == 0
    by_source = json.loads((opt_ml / "model" / "metrics.json").read_text())["evaluation_by_source"]
    heldout = by_source["heldout_prompts"]
    assert heldout["skipped"] == "heldout_prompt_fraction=0: every prompt is trained on"
    assert heldout["explained_variance"] is None and heldout["l0"] is None and heldout["ce_loss_score"] is None
    assert by_source["training_prompts"]["prompts_in_source"] == 95
    (final,) = [line for line in result.stdout.splitlines() if "[metric] final=1" in line]
    assert "explained_variance_training_prompts=" in final and "heldout_prompts" not in final


def test_without_prompts_both_prompt_sources_say_why(opt_ml: Path) -> None:
    """docs/train.md: "(`heldout_prompt_fraction=0`, no prompts) has `skipped` with the reason and null figures"."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096", "prompt_ratio": "0"})
    result = run_container(opt_ml, "train")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert not (opt_ml / "model" / HELDOUT_FILE).exists()
    metrics = json.loads((opt_ml / "model" / "metrics.json").read_text())
    for name in ("training_prompts", "heldout_prompts"):
        assert metrics["evaluation_by_source"][name]["skipped"].startswith("no prompts were trained on")
        assert metrics["evaluation_by_source"][name]["explained_variance"] is None
    assert 0 < metrics["evaluation_by_source"]["stories"]["stories_evaluated"] <= 100


def test_a_fraction_leaving_a_category_untrained_stops_before_the_model(opt_ml: Path) -> None:
    """docs/train.md: "A fraction that would leave a category with no training prompts ends the run"."""
    prompts = opt_ml / "input" / "data" / "prompts"
    shutil.rmtree(prompts)
    categories = ["official narrative"] * 10 + ["refusal"]
    Dataset.from_dict(
        {"id": [f"p{i}" for i in range(11)], "text": [f"question {i}" for i in range(11)], "category": categories}
    ).save_to_disk(str(prompts))
    write_hyperparameters(opt_ml, {**TINY_RUN, "heldout_prompt_fraction": "0.5"})
    result = run_container(opt_ml, "train")
    assert result.returncode == 2, result.stdout[-3000:]
    failure = (opt_ml / "output" / "failure").read_text()
    assert "heldout_prompt_fraction=0.5" in failure and "category 'refusal'" in failure
    assert "lower the fraction" in failure
    assert "Loaded pretrained model" not in result.stdout + result.stderr  # the model was never loaded
    assert not (opt_ml / "checkpoints").exists() or not any((opt_ml / "checkpoints").iterdir())
    assert not (opt_ml / "model" / "cfg.json").exists()


@pytest.mark.parametrize("fraction", [1.0, -0.1, float("nan")])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    """docs/configuration.md: "An unknown key, a wrong type or an impossible combination stops the run"."""
    from container_src.config import ConfigError

    with pytest.raises(ConfigError, match=r"heldout_prompt_fraction=.*must be in \[0, 1\)"):
        TrainConfig(heldout_prompt_fraction=fraction)


def test_sample_split_matches_the_record_train_writes(opt_ml: Path) -> None:
    """docs/train.md: "The held-out ids go to `model/heldout_prompts.json`".
    The ids train writes beside the SAE are those of the seeded split, and a second run (a resume of the
    finished run) writes the same ones."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096", "seed": "11"})
    expected = split_prompts(load_prompts(SAMPLE_PROMPTS), 0.1, seed=11).record["heldout_ids"]
    written, logs = [], []
    for _ in range(2):
        result = run_container(opt_ml, "train")
        assert result.returncode == 0, result.stdout[-4000:]
        written.append(json.loads((opt_ml / "model" / HELDOUT_FILE).read_text())["heldout_ids"])
        logs.append(result.stdout)
    assert "resuming from" not in logs[0] and "resuming from" in logs[1]
    assert written == [expected, expected] and len(expected) == 9
