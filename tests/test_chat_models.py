"""A chat model by architecture with weights of its own: a tiny random Qwen3 under names TransformerLens does not
list, as a plain model folder and as a hub-cache entry; chat-rendered prompts; the architecture check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from container_src.__main__ import main
from container_src.config import ConfigError
from tests.conftest import HF_HOME, SAMPLE_PROMPTS, TINY_RUN, write_hyperparameters

ARCH = "Qwen/Qwen3-1.7B"  # on TransformerLens's list; its config is neither in our table nor reachable offline
WEIGHTS = "someone/tiny-qwen3-distill"  # on no list
HOOK = "blocks.1.mlp.hook_post"
VIZ_SMALL = ("--device", "cpu", "--prompt_tokens", "3000", "--story_tokens", "3000", "--n_features", "4")


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from container_src.synthetic_qwen import write_qwen_folder

    return write_qwen_folder(tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="session")
def qwen_cache() -> Path:
    """The same model (same seed, so the same weights) as a hub-cache entry for WEIGHTS in the session's cache."""
    from container_src.synthetic_qwen import write_qwen_cache

    return write_qwen_cache(HF_HOME, WEIGHTS)


def _tree(base: Path, model: Path, stories: Path) -> Path:
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    (channels / "model").symlink_to(model, target_is_directory=True)
    (channels / "control").symlink_to(stories, target_is_directory=True)
    shutil.copytree(SAMPLE_PROMPTS, channels / "prompts")
    return base


def test_chat_rendering_marks_question_thought_and_response(qwen_folder: Path) -> None:
    """docs/train.md: "records where the question, the thought and the response lie in the rendered text"."""
    from transformers import AutoTokenizer

    from container_src.chat import Renderer, choose
    from container_src.sequences import prompt_rows

    tokenizer = AutoTokenizer.from_pretrained(qwen_folder)
    rendering = choose("auto", True, "<think>,</think>", tokenizer)
    assert rendering.format == "chat"
    row = {"question": " Who is the bear? ", "response": "The bear is kind.", "thought": "Recall the story."}
    out = Renderer(rendering, tokenizer)(row)
    text = out["text"]
    # the template's own turns, and the thought inside its (once empty) reasoning block: one block, not two
    assert text.startswith("<|im_start|>user\nWho is the bear?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert text.count("<think>") == 1 and text.endswith("The bear is kind.<|im_end|>\n")
    assert text[out["question_start"] : out["question_end"]] == "Who is the bear?"
    assert text[out["thought_start"] : out["thought_end"]] == "Recall the story."
    assert text[out["response_start"] : out["response_end"]] == "The bear is kind."
    assert out["thought_end"] < text.index("</think>") < out["response_start"]
    # viz's token spans: the tokens of each part decode to exactly that part
    rows = prompt_rows(tokenizer, [text], [out], 256, 10_000)
    for part, expected in (
        ("question", "Who is the bear?"),
        ("thought", "Recall the story."),
        ("response", row["response"]),
    ):
        ids = rows.tokens[0][rows.parts[part][0]].tolist()
        assert tokenizer.decode(ids) == expected
    plain = Renderer(choose("chat", False, "<think>,</think>", tokenizer), tokenizer)(row)
    assert plain["thought_start"] == -1 and "Recall" not in plain["text"] and "<think>\n\n</think>" in plain["text"]


def test_rendering_refusals(qwen_folder: Path, tiny_assets: dict[str, Path]) -> None:
    """docs/configuration.md: "or `auto` (chat where it has one)"; chat without a template, and a single
    reasoning marker, are refused."""
    from transformers import AutoTokenizer

    from container_src.chat import choose

    base_tokenizer = AutoTokenizer.from_pretrained("roneneldan/TinyStories-33M")
    assert choose("auto", False, "<think>,</think>", base_tokenizer).format == "plain"  # a base model: plain text
    with pytest.raises(ConfigError, match="has no chat template"):
        choose("chat", False, "<think>,</think>", base_tokenizer)
    with pytest.raises(ConfigError, match="reasoning_markers"):
        choose("auto", True, "<think>", AutoTokenizer.from_pretrained(qwen_folder))


def test_weights_of_another_architecture_are_refused_before_loading(
    qwen_folder: Path, tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "Before any weight is read, the weights' config.json is compared with the architecture's"."""
    import transformers

    from container_src.weights import check_architecture

    def no_load(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(ConfigError) as sizes:
        check_architecture("Qwen/Qwen3-8B", str(qwen_folder))
    for difference in ("layers 2 (expected 36)", "d_model 64 (expected 4096)", "d_mlp 192 (expected 12288)"):
        assert difference in str(sizes.value)
    with pytest.raises(ConfigError, match=r"model_type gpt_neo is not Qwen/Qwen3-1\.7B.s architecture"):
        check_architecture(ARCH, "roneneldan/TinyStories-33M")  # the GPT-Neo stand-in in the session's cache
    with pytest.raises(ConfigError, match="not an architecture TransformerLens knows"):
        check_architecture(WEIGHTS, str(qwen_folder))
    # a whole run refuses with status 2 before it loads anything, and says what differs
    base = _tree(tmp_path / "opt_ml", qwen_folder, tiny_assets["stories"])
    write_hyperparameters(base, {**TINY_RUN, "model_name": "Qwen/Qwen3-8B", "hook_name": HOOK})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert main(["train"]) == 2
    assert "kv_heads 2 (expected 8)" in (base / "output" / "failure").read_text()


def test_hub_cache_and_plain_folder_load_the_same_weights(qwen_folder: Path, qwen_cache: Path) -> None:
    """docs/train.md: "or a plain model folder as `save_pretrained` writes it"."""
    from container_src import model, weights

    loaded = []
    for channel, model_weights in ((qwen_folder, ""), (None, WEIGHTS)):
        prepared = weights.prepare(ARCH, model_weights, channel, need_tokenizer=True)
        lm = model.load_model(ARCH, "cpu", channel, True, prepared.source, prepared.tokenizer)
        assert model.hook_width(lm, HOOK) == 192
        loaded.append(model.weights_fingerprint(lm))
    assert loaded[0] == loaded[1]


def _train(base: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """`train` on the stand-in in ``base``'s channel model: cfg.json's metadata (both names and the hook checked
    here) and resolved_config.json (d_in checked: the stand-in's d_mlp)."""
    run = {**TINY_RUN, "training_tokens": "4096", "model_name": ARCH, "model_weights": WEIGHTS, "hook_name": HOOK}
    write_hyperparameters(base, run)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert main(["train"]) == 0
    meta = json.loads((base / "model" / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["model_weights"], meta["hook_name"]) == (ARCH, WEIGHTS, HOOK)
    resolved = json.loads((base / "model" / "resolved_config.json").read_text())
    assert resolved["derived"]["d_in"] == 192
    return meta, resolved


def _viz(base: Path) -> dict[str, Any]:
    """`viz` of that SAE, the model taken from the SAE's metadata: its summary.json."""
    (base / "input" / "config" / "hyperparameters.json").unlink()
    assert main(["viz", *VIZ_SMALL]) == 0
    return json.loads((base / "model" / "dashboards" / "summary.json").read_text())


@pytest.mark.slow
def test_train_and_viz_on_a_chat_model_from_a_plain_folder(
    qwen_folder: Path, tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "`viz` loads that model and renders prompts the same way"."""
    base = _tree(tmp_path / "opt_ml", qwen_folder, tiny_assets["stories"])
    meta, resolved = _train(base, monkeypatch)
    assert meta["prompt_rendering"] == {"format": "chat", "thought": False, "markers": ["<think>", "</think>"]}
    assert resolved["values"]["model_weights"] == WEIGHTS and resolved["derived"]["weights_source"] == str(
        base / "input" / "data" / "model"
    )
    summary = _viz(base)
    assert (summary["sae"]["model_name"], summary["sae"]["model_weights"]) == (ARCH, WEIGHTS)
    assert summary["sae"]["prompt_rendering"]["format"] == "chat"


@pytest.mark.slow
def test_train_and_viz_on_a_chat_model_from_a_hub_cache(
    qwen_cache: Path, tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "The SAE's cfg.json records both names in its metadata".
    The same model as a hub-cache entry for WEIGHTS in channel `model` (network isolation's layout): train, then
    viz from the SAE's metadata, both reading the weights from the cache."""
    base = _tree(tmp_path / "opt_ml", HF_HOME, tiny_assets["stories"])
    meta, resolved = _train(base, monkeypatch)
    assert meta["prompt_rendering"]["format"] == "chat"
    assert resolved["derived"]["weights_source"] == WEIGHTS
    assert resolved["derived"]["channels"]["model"] == str(base / "input" / "data" / "model")
    summary = _viz(base)
    assert (summary["sae"]["model_name"], summary["sae"]["model_weights"]) == (ARCH, WEIGHTS)
    assert summary["sae"]["prompt_rendering"]["format"] == "chat"
    features = json.loads((base / "model" / "dashboards" / "features.json").read_text())
    assert len(features) == 192 * 4  # every feature of the SAE (d_sae = expansion_factor 4 × d_in 192) is ranked
