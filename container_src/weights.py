"""A model by architecture, its weights from anywhere: `model_name` names the TransformerLens architecture, and the
weights come from `model_weights` (a Hugging Face id) or a plain model folder in channel `model`. The weights'
config.json is checked against the architecture before any weight is read, and the model is built with
TransformerLens's own loading steps from the weights' folder, under no other name.

Import it only after the run has set the HF environment (``paths.model_inputs``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src.config import ConfigError
from container_src.model_shapes import ARCHITECTURES, FAMILIES

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

SHAPE_KEYS = ("model_type", "layers", "d_model", "d_mlp", "heads", "kv_heads")


def is_plain_folder(path: Path) -> bool:
    """Whether ``path`` is a plain Hugging Face model folder (config.json at its top), not a hub cache."""
    return (path / "config.json").is_file()


def weights_source(model_name: str, model_weights: str, channel: Path | None) -> str | None:
    """What the weights are read from: channel `model` when it is a plain folder, else ``model_weights`` (a hub id,
    from the hub or the channel's hub cache). None: ``model_name``'s own weights, through SAE-Lens's loader."""
    if channel is not None and is_plain_folder(channel):
        return str(channel)
    if model_weights and model_weights != model_name:
        return model_weights
    return None


def shape_of(hf_config: Any) -> dict[str, Any]:
    """The sizes that make an architecture, from a transformers config (its attribute map reads GPT-Neo's
    ``num_layers`` as ``num_hidden_layers``, and so on)."""
    d_model = hf_config.hidden_size
    heads = hf_config.num_attention_heads
    return {
        "model_type": hf_config.model_type,
        "layers": hf_config.num_hidden_layers,
        "d_model": d_model,
        "d_mlp": getattr(hf_config, "intermediate_size", None) or 4 * d_model,
        "heads": heads,
        "kv_heads": getattr(hf_config, "num_key_value_heads", None) or heads,
    }


def expected_shape(model_name: str) -> tuple[dict[str, Any] | None, str]:
    """The architecture's sizes and where they were read: the table of published configs, else its config.json
    from the hub (or a hub cache the run reads); (None, why) when neither has it."""
    known = ARCHITECTURES.get(model_name)
    if known is not None:
        fields = dataclasses.asdict(known)
        return {
            key: fields[key] for key in SHAPE_KEYS
        }, "the table of published configs (container_src/model_shapes.py)"
    from transformers import AutoConfig

    try:
        return shape_of(AutoConfig.from_pretrained(model_name)), f"{model_name}'s config.json"
    except Exception as exc:  # no network, not cached: the check falls back to the model type
        return None, f"{model_name}'s config.json could not be read ({type(exc).__name__})"


def differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    return [f"{key} {found[key]} (expected {expected[key]})" for key in SHAPE_KEYS if expected[key] != found[key]]


def check_architecture(model_name: str, source: str) -> dict[str, Any]:
    """Refuse weights whose config.json is not ``model_name``'s architecture, naming each size that differs; only
    config.json is read. Returns the weights' sizes."""
    from transformer_lens.loading_from_pretrained import get_official_model_name
    from transformers import AutoConfig

    try:
        get_official_model_name(model_name)
    except ValueError:
        raise ConfigError(
            f"model_name={model_name!r} is not an architecture TransformerLens knows; name one from its list "
            "(for example Qwen/Qwen3-8B) and give the weights as model_weights"
        ) from None
    try:
        found = shape_of(AutoConfig.from_pretrained(source))
    except Exception as exc:  # missing or unreadable config.json: a problem with the input
        raise ConfigError(
            f"model weights {source}: could not read their config.json ({type(exc).__name__}: {exc})"
        ) from None
    expected, where = expected_shape(model_name)
    if expected is None:
        family = next((t for prefix, t in FAMILIES.items() if model_name.startswith(prefix)), None)
        if family is not None and family != found["model_type"]:
            raise ConfigError(
                f"model weights {source}: model_type {found['model_type']} is not {model_name}'s architecture "
                f"(model_type {family}); name the architecture they are as model_name"
            )
        logger.warning(
            "model weights %s: sizes not checked against %s (%s); model_type %s",
            source,
            model_name,
            where,
            found["model_type"] if family else "not checked either",
        )
        return found
    diff = differences(expected, found)
    if diff:
        raise ConfigError(
            f"model weights {source} are not the architecture model_name={model_name!r} (from {where}): "
            f"{', '.join(diff)}. Name the architecture they are as model_name, or give weights of this one."
        )
    logger.info("model weights %s: %s's architecture (%s)", source, model_name, ", ".join(map(str, found.values())))
    return found


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # no tokenizer files: a problem with the input
        raise ConfigError(
            f"model weights {source}: could not load the tokenizer ({type(exc).__name__}: {exc}); the folder "
            "needs tokenizer.json or the tokenizer's own files beside config.json"
        ) from None


def load_hooked(source: str, tokenizer: Any, device: str) -> HookedTransformer:
    """``HookedTransformer.from_pretrained_no_processing``'s steps, with the config and weights read from the
    weights' own folder (TransformerLens takes a local folder for both) instead of looked up by name."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM
    from transformers.utils.hub import cached_file

    try:
        config_file = cached_file(source, "config.json")
        folder = str(Path(config_file).parent) if config_file else source
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as exc:  # missing or corrupt weights: a problem with the input
        raise ConfigError(f"model weights {source}: could not load them ({type(exc).__name__}: {exc})") from None
    cfg = loading.get_pretrained_model_config(
        folder, hf_cfg=hf_model.config.to_dict(), fold_ln=False, device=device, dtype=torch.float32
    )
    state_dict = loading.get_pretrained_state_dict(folder, cfg, hf_model, dtype=torch.float32)
    del hf_model
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model


@dataclasses.dataclass(frozen=True)
class Weights:
    """The run's model: its architecture, the weights' name (what the SAE's metadata records), where they are read
    from (None: the architecture's own, through SAE-Lens), and its tokenizer (None where none was needed)."""

    architecture: str
    name: str
    source: str | None
    tokenizer: Any


def prepare(model_name: str, model_weights: str, channel: Path | None, need_tokenizer: bool) -> Weights:
    """Check other weights against ``model_name`` (config.json only) and load the tokenizer: the cheap part."""
    source = weights_source(model_name, model_weights, channel)
    if source is not None:
        check_architecture(model_name, source)
    tokenizer = load_tokenizer(source or model_name) if source is not None or need_tokenizer else None
    return Weights(model_name, model_weights or model_name, source, tokenizer)
