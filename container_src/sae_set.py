"""The `saes` key of `train`: several SAE configurations trained together on one forward pass of the model.

``saes`` is a JSON list of objects of per-SAE keys (``PER_SAE_KEYS``); every other key of train is shared. Each
entry becomes a whole ``TrainConfig`` (the shared one with the entry's keys put in), the configuration a single
`train` run of that SAE would have. Parsing imports nothing heavy, so a bad list is refused with the config.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from container_src.config_sources import ConfigError, convert

PER_SAE_KEYS = ("name", "architecture", "k", "expansion_factor", "d_sae", "hook_name")
"""What may differ between the SAEs of one job; the rest (learning rate, tokens, batch, data) is shared, because
SAE-Lens's multi-SAE trainer steps every SAE with one trainer configuration on one stream."""
EXAMPLE = '[{"k": 32}, {"k": 64, "expansion_factor": 16}]'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Member:
    """One SAE of a multi-SAE job: its folder name under model/ and its whole configuration."""

    name: str
    config: Any
    """The ``TrainConfig`` a single `train` run of this SAE would have (``saes`` empty)."""
    overrides: dict[str, Any]
    """The keys its entry set."""


def default_name(entry: dict[str, Any], shared: Any) -> str:
    """``<architecture>-k<k>-x<expansion>`` (``-d<d_sae>`` when d_sae is set), with the hook's layer when it is set."""
    arch = entry.get("architecture", shared.architecture)
    k = entry.get("k", shared.k)
    d_sae = entry.get("d_sae", None if "expansion_factor" in entry else shared.d_sae)
    size = f"d{d_sae}" if d_sae else f"x{entry.get('expansion_factor', shared.expansion_factor)}"
    hook = f"-{entry['hook_name']}" if "hook_name" in entry else ""
    return f"{arch}-k{k}-{size}{hook}"


def _entries(text: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"saes: not valid JSON ({exc}); give a list of objects, for example {EXAMPLE}") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"saes: must be a non-empty JSON list of objects, for example {EXAMPLE}")
    for i, entry in enumerate(entries):
        if unknown := sorted(set(entry) - set(PER_SAE_KEYS)):
            raise ConfigError(
                f"saes[{i}]: {', '.join(unknown)} cannot differ between the SAEs of one job (one trainer "
                f"configuration steps them all); per-SAE keys are {', '.join(PER_SAE_KEYS)}. Set the others once, "
                "as train keys, or train those SAEs in separate jobs"
            )
    return entries


def members(cfg: Any) -> list[Member]:
    """Each SAE of ``cfg.saes``, checked as a single run's configuration would be; [] when ``saes`` is empty."""
    if not cfg.saes.strip():
        return []
    out: list[Member] = []
    for i, entry in enumerate(_entries(cfg.saes)):
        try:  # "32" (a launcher's sweep value) as well as 32
            entry = {k: v if k == "name" else convert(k, v, type(cfg)) for k, v in entry.items()}
        except ConfigError as exc:
            raise ConfigError(f"saes[{i}]: {exc}") from None
        name = str(entry.pop("name", None) or default_name(entry, cfg))
        if not _NAME.match(name):
            raise ConfigError(f"saes[{i}]: name={name!r} must be letters, digits, '.', '_' or '-' (up to 64)")
        if "expansion_factor" in entry and "d_sae" not in entry:
            entry["d_sae"] = None  # the entry's expansion factor sizes it, not a shared d_sae
        try:
            single = dataclasses.replace(cfg, saes="", **entry)
        except ConfigError as exc:
            raise ConfigError(f"saes[{i}] ({name}): {exc}") from None
        except TypeError as exc:  # a value of the wrong JSON type reaches the dataclass
            raise ConfigError(f"saes[{i}] ({name}): {exc}") from None
        out.append(Member(name, single, entry))
    names = [m.name for m in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"saes: two SAEs are named {', '.join(dupes)}; give each a distinct `name`")
    return out


def check_multi(cfg: Any) -> None:
    """Refuse what a multi-SAE job cannot do, before anything is loaded: SAE-Lens's multi-SAE runner cannot
    compile the SAEs (compile_sae=true); the SAE list itself must parse."""
    members(cfg)
    if cfg.compile_sae:
        raise ConfigError(
            "compile_sae=true: SAE-Lens's multi-SAE trainer does not compile SAEs; leave compile_sae empty (the "
            "multi-SAE job then runs them eagerly) or train a compiled SAE alone, without `saes`"
        )
