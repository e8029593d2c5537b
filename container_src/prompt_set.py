"""Which prompts viz reads: those `train` held out (the default), those it trained on, or all of them, by the
held-out record beside the SAE."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src.config import ConfigError
from container_src.prompts import HELDOUT_FILE, prompt_ids, prompts_fingerprint, read_heldout

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


def select(prompts: Dataset, wanted: str, sae_dir: Path) -> tuple[Dataset, dict[str, Any]]:
    """The prompts of set ``wanted`` (heldout, train or all), and what summary.json says about them: the set used,
    how many prompts it holds, and why it differs from the one asked for."""
    record = read_heldout(sae_dir)
    info: dict[str, Any] = {"asked": wanted, "used": wanted, "prompts": len(prompts), "of": len(prompts), "note": ""}
    if wanted == "all":
        return prompts, info
    if record is None:
        info["used"] = "all"
        info["note"] = f"the SAE has no {HELDOUT_FILE} (trained without held-out prompts): every prompt is read"
        logger.warning("prompt_set=%s: %s, and some were trained on", wanted, info["note"])
        return prompts, info
    if not record["heldout_ids"] and wanted == "heldout":
        info["used"] = "all"
        info["note"] = "the SAE was trained on every prompt (heldout_prompt_fraction=0): every prompt is read"
        logger.warning("prompt_set=heldout: %s, all of them trained on", info["note"])
        return prompts, info
    ids = prompt_ids(prompts)
    held = set(map(str, record["heldout_ids"]))
    rows = [i for i, pid in enumerate(ids) if (pid in held) == (wanted == "heldout")]
    matched = sum(pid in held for pid in ids)
    if held and matched == 0:
        raise ConfigError(
            f"prompt_set={wanted}: none of the {len(held)} held-out ids in the SAE's {HELDOUT_FILE} is in the prompts "
            "channel; pass the prompts the SAE was trained with, or prompt_set=all"
        )
    if record.get("prompts_fingerprint") not in (None, prompts_fingerprint(prompts)):
        logger.warning(
            "the prompts channel differs from the one the SAE was trained with (%d of %d held-out ids found)",
            matched,
            len(held),
        )
    if not rows:
        raise ConfigError(
            f"prompt_set={wanted}: the SAE's {HELDOUT_FILE} leaves no {wanted} prompt in the channel "
            f"({len(held)} held out of {len(ids)}); use prompt_set=all"
        )
    info["prompts"] = len(rows)
    logger.info("prompt_set=%s: %d of %d prompts", wanted, len(rows), len(ids))
    return prompts.select(rows, keep_in_memory=True), info
