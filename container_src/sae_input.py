"""The SAE that viz reads: unpacked from a train run's model.tar.gz where needed, its cfg.json checked, loaded."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from container_src.config import ConfigError

SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def unpack(source: Path, scratch: Path) -> Path:
    """The folder that holds the SAE: ``source`` itself, or what its model.tar.gz unpacks to."""
    if (source / "cfg.json").is_file():
        return source
    archives = sorted(source.glob("*.tar.gz"))
    if len(archives) != 1:
        found = ", ".join(sorted(p.name for p in source.iterdir())) or "nothing"
        raise ConfigError(
            f"channel sae: {source} holds neither an SAE ({', '.join(SAE_FILES)}) nor one model.tar.gz (found {found})"
        )
    try:
        with tarfile.open(archives[0]) as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"channel sae: {archives[0]} is not a readable tar.gz ({exc})") from None
    found = sorted(p.parent for p in scratch.rglob("cfg.json"))
    if not found:
        raise ConfigError(f"channel sae: {archives[0].name} holds no SAE (no cfg.json)")
    return found[0]


def read_cfg(sae_dir: Path) -> dict[str, Any]:
    """cfg.json, checked for what viz needs, without loading any weights."""
    missing = [name for name in SAE_FILES if not (sae_dir / name).is_file()]
    if missing:
        raise ConfigError(f"channel sae: {sae_dir} lacks {', '.join(missing)}; is it a whole SAE-Lens SAE?")
    try:
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        meta = cfg["metadata"]
        for key in ("model_name", "hook_name"):
            if not isinstance(meta.get(key), str):
                raise KeyError(f"metadata.{key}")
        for key in ("d_in", "d_sae"):
            if not isinstance(cfg.get(key), int):
                raise KeyError(key)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"channel sae: {sae_dir / 'cfg.json'} is not an SAE-Lens config ({exc})") from None
    return cfg


def load(sae_dir: Path, device: str) -> Any:
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(sae_dir), device=device)
    except Exception as exc:  # truncated or foreign weights: a problem with the input
        raise ConfigError(f"channel sae: could not load the SAE in {sae_dir} ({type(exc).__name__}: {exc})") from None
