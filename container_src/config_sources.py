"""How a configuration's sources are read and merged, and how their values become typed fields.

The sources, lowest precedence first: the schema's defaults, a preset (``presets/NAME.json``) or a ``--config FILE``,
SageMaker's ``hyperparameters.json`` (all strings), then ``--key value`` flags. ``merge`` takes them in that order and
converts each value to its field's type; an unknown key or a bad value raises :class:`ConfigError` naming the key.
The schemas themselves, and ``resolve`` that applies this to one of them, are in ``config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).parent / "presets"
# Keys that existed once, with what to do instead.
REMOVED_KEYS = {
    "compile_llm": (
        "removed: SAE-Lens's torch.compile of the model's run_with_cache never worked here (its caching hook is a new "
        "function on every call and a guard of the compiled code, so torch keeps recompiling it until its recompile "
        "limit; on an H100 it failed with a KeyError at the hook). fused_lm is what makes the model fast; drop the key"
    ),
}
# Keys renamed, old name -> new: the old name still works, with a warning, until the next release.
RENAMED_KEYS = {
    "tinystories_path": "control_path",
    "tinystories_split": "control_split",
    "tinystories_eval_split": "control_eval_split",
}
# Keys that control where the config comes from, or which mode runs; accepted in every source, not fields.
META_KEYS = ("mode", "preset", "config")
# SageMaker itself adds hyperparameters in some set-ups (script-mode SDK settings, the tuner's objective); they are
# not ours to interpret and must not fail a job.
_PLATFORM_KEY_PREFIXES = ("sagemaker_", "_tuning_objective_metric")
_SECRET_MARKERS = ("api_key", "apikey", "secret", "password", "auth_token", "access_token", "hf_token", "wandb_key")
_SOURCE_NAMES = {"hyperparameters": "the hyperparameters", "cli": "the command line"}


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key."""


# ---------------------------------------------------------------------------------------------------------------
# Type conversion


def field_types(schema: type) -> dict[str, Any]:
    """Each field of the dataclass ``schema`` with its type (the annotation evaluated)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def convert(key: str, raw: Any, schema: type) -> Any:
    """Convert ``raw`` (a string from hyperparameters or a flag, or a JSON value) to the type of field ``key`` of
    ``schema`` (``merge`` has refused keys that are not fields)."""
    base, optional = _unwrap_optional(field_types(schema)[key])
    raw = _unquote(raw)
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null"))):
        return None
    try:
        return _convert_scalar(base, raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={raw!r}: expected {base.__name__}{' or none' if optional else ''} ({exc})") from None


def _unquote(raw: Any) -> Any:
    """Some SageMaker clients JSON-encode every hyperparameter, so "64" can arrive as '"64"'; take the inner string."""
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        with contextlib.suppress(json.JSONDecodeError):
            inner = json.loads(raw)
            if isinstance(inner, str):
                return inner
    return raw


def _convert_scalar(base: type, raw: Any) -> Any:
    if base is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError("not a boolean (true/false)")
    if base is int:
        if isinstance(raw, bool):
            raise TypeError("a boolean is not an integer")
        if isinstance(raw, int):
            return raw
        try:
            number = float(str(raw).replace("_", "")) if not isinstance(raw, float) else raw
        except ValueError:
            raise ValueError("not a number") from None
        if not number.is_integer():
            raise ValueError("not a whole number")
        return int(number)
    if base is float:
        if isinstance(raw, bool):
            raise TypeError("a boolean is not a number")
        return float(str(raw).replace("_", "")) if isinstance(raw, str) else float(raw)
    if base is str:
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise TypeError(f"got {type(raw).__name__}")
        return str(raw)
    raise TypeError(f"unsupported field type {base}")


def check_types(cfg: object) -> None:
    """Values set in Python (tests, presets loaded by hand) get the same checks as strings from SageMaker."""
    for key, tp in field_types(type(cfg)).items():
        value = getattr(cfg, key)
        base, optional = _unwrap_optional(tp)
        if value is None and optional:
            continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, key, float(value))
            continue
        if not isinstance(value, base) or (base is int and isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r}: expected {base.__name__}, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Keys a schema does not take


def looks_like_secret(key: str) -> bool:
    """A key that names a credential; such keys are refused in every configuration source (and by the launcher)."""
    lowered = key.lower()
    return lowered in ("key", "token") or any(marker in lowered for marker in _SECRET_MARKERS)


def _modes_taking(key: str, schema: type, modes: Mapping[str, type]) -> list[str]:
    """The other modes whose configuration has ``key``."""
    return [mode for mode, other in modes.items() if other is not schema and key in field_types(other)]


def _unknown_key_message(key: str, schema: type, source: str, modes: Mapping[str, type]) -> str:
    if key in REMOVED_KEYS:
        return f"configuration key {key!r}: {REMOVED_KEYS[key]}"
    if looks_like_secret(key):
        return (
            f"{key}: secrets never go in the configuration or hyperparameters. "
            "Set WANDB_API_KEY in the environment locally, or WANDB_SECRET_ID (a Secrets Manager id) for a job."
        )
    where = f" (from {_SOURCE_NAMES.get(source, source.replace(':', ' ', 1))})"
    if owners := _modes_taking(key, schema, modes):
        return f"configuration key {key!r}{where} belongs to {' and '.join(owners)}, not {schema.__name__}"
    names = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Known keys: {', '.join(names)}."
    return f"unknown configuration key {key!r}{where} for {schema.__name__}.{hint}"


# ---------------------------------------------------------------------------------------------------------------
# Sources


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object of key: value pairs")
    return data


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"preset={name!r}: no such preset. Available: {', '.join(list_presets())}")
    return read_json_object(path, "preset")


def parse_cli(argv: list[str]) -> dict[str, str]:
    """``--key value`` and ``--key=value`` pairs; dashes in keys become underscores."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def pick_mode(argv_mode: str, hyperparameters: Mapping[str, Any], cli: Mapping[str, str]) -> str:
    """``--mode`` beats a ``mode`` hyperparameter, which beats the command line's MODE (SageMaker always says train)."""
    return str(_unquote(cli.get("mode") or hyperparameters.get("mode") or argv_mode))


def _layers(hyperparameters: dict[str, Any], cli: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Each source with its name, lowest precedence first."""
    layers: list[tuple[str, dict[str, Any]]] = []
    preset = _unquote(cli.get("preset", hyperparameters.get("preset")))
    config_file = _unquote(cli.get("config", hyperparameters.get("config")))
    if preset:
        layers.append((f"preset:{preset}", load_preset(str(preset))))
    if config_file:
        layers.append((f"config:{config_file}", read_json_object(Path(str(config_file)), "config file")))
    layers.append(("hyperparameters", hyperparameters))
    layers.append(("cli", cli))
    return layers


def _renamed(source: str, layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` with renamed keys under their new names (with a warning); both names in one source is an error."""
    out = dict(layer)
    for old, new in RENAMED_KEYS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{source}: {old} and {new} are both given; {old} is the old name of {new}: keep {new}")
        logger.warning("%s: %s is deprecated, use %s (the old name works until the next release)", source, old, new)
        out[new] = out.pop(old)
    return out


def merge(
    hyperparameters: Mapping[str, Any] | None,
    cli: Mapping[str, str] | None,
    schema: type,
    modes: Mapping[str, type],
    shared_tree: bool = False,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The values for ``schema`` from every source, converted, with the source of each and the sources present.

    ``modes`` are every mode's schemas, to tell another mode's key from an unknown one. With ``shared_tree``, keys of
    another mode in the hyperparameters or their preset are left to that mode, with a warning; otherwise they are an
    error.
    """
    layers = _layers(dict(hyperparameters or {}), dict(cli or {}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    left: set[str] = set()
    for source, layer in layers:
        for key, raw in _renamed(source, layer).items():
            if key.startswith(_PLATFORM_KEY_PREFIXES):
                logger.info("ignoring platform hyperparameter %s", key)
                continue
            if key in META_KEYS:
                if source not in ("hyperparameters", "cli"):
                    raise ConfigError(
                        f"{source}: key {key!r} is read only from the command line or the hyperparameters; "
                        "move it there"
                    )
                continue
            if key not in field_types(schema):
                shared = shared_tree and (source == "hyperparameters" or source.startswith("preset:"))
                if shared and _modes_taking(key, schema, modes):
                    left.add(key)
                    continue
                raise ConfigError(_unknown_key_message(key, schema, source, modes))
            values[key] = convert(key, raw, schema)
            sources[key] = source
    if left:
        logger.warning("%s: keys of other modes, left to them: %s", schema.__name__, ", ".join(sorted(left)))
    return values, sources, [source for source, layer in layers if layer]
