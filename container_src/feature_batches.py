"""Sequences through the model up to the SAE's hook and through the SAE, a batch at a time: the features viz counts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from container_src.model import Runtime

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where the runtime asks for it, as training ran."""
    import torch

    return torch.autocast(runtime.device.split(":")[0], torch.bfloat16, enabled=runtime.autocast)


class Batches:
    """Runs packed sequences through the model up to the hook and through the SAE, a batch at a time."""

    def __init__(self, lm: Any, sae: Any, hook_name: str, runtime: Runtime, batch_size: int) -> None:
        from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

        self.lm, self.sae, self.hook_name = lm, sae, hook_name
        self.runtime, self.batch_size = runtime, batch_size
        self.stop_at_layer = extract_stop_at_layer_from_tlens_hook_name(hook_name)

    def __call__(self, tokens: torch.Tensor, what: str) -> Iterator[tuple[int, torch.Tensor]]:
        import torch

        n = tokens.shape[0]
        step = max(1, -(-n // self.batch_size) // 10)
        for i, start in enumerate(range(0, n, self.batch_size)):
            batch = tokens[start : start + self.batch_size].to(self.runtime.device)
            with (
                torch.inference_mode(),
                autocast(self.runtime),
            ):
                _, cache = self.lm.run_with_cache(
                    batch, names_filter=[self.hook_name], stop_at_layer=self.stop_at_layer
                )
                acts = cache[self.hook_name]
                acts = acts.flatten(2) if acts.ndim == 4 else acts  # attention heads, as SAE-Lens flattens them
                feats = self.sae.encode(acts)
            if i % step == 0:
                logger.info("%s: %d/%d sequences", what, min(start + self.batch_size, n), n)
            yield start, feats.float()
