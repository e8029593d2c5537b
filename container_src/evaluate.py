"""Final evaluation of a trained SAE, with SAE-Lens's own evals, into the flat record of metrics.json."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

EXPLAINED_VARIANCE_DEFINITION = (
    "1 - E[||x - x_hat||^2] / E[||x - E[x]||^2] over all evaluated tokens, centred on the mean of the evaluated "
    "activations (SAE-Lens >= 6.45.1 `explained_variance`); `explained_variance_legacy` is the older per-batch mean"
)
CE_LOSS_SCORE_DEFINITION = (
    "(CE with zero-ablated activations - CE with the SAE spliced in) / (CE zero-ablated - CE of the clean model); "
    "1 means the SAE preserves next-token loss"
)


def evaluate(
    sae: SAE[Any],
    model: HookedTransformer,
    store: ActivationsStore,
    n_batches: int,
) -> dict[str, Any]:
    """Reconstruction, sparsity and downstream-loss metrics on ``n_batches`` fresh batches of the training stream."""
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    eval_config = EvalConfig(
        batch_size_prompts=store.store_batch_size_prompts,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_ce_loss=True,
        compute_kl=False,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    sae.eval()
    grouped, _ = run_evals(
        sae=sae,
        activation_store=store,
        model=model,
        # the trainer folds any activation scaling into the weights when it finishes
        activation_scaler=ActivationScaler(),
        eval_config=eval_config,
        exclude_special_tokens=False,
    )
    flat = {key: value for group in grouped.values() for key, value in group.items()}
    return {
        "explained_variance": flat["explained_variance"],
        "explained_variance_definition": EXPLAINED_VARIANCE_DEFINITION,
        "explained_variance_legacy": flat["explained_variance_legacy"],
        "mse": flat["mse"],
        "cossim": flat["cossim"],
        "l0": flat["l0"],
        "l1": flat["l1"],
        "ce_loss_score": flat["ce_loss_score"],
        "ce_loss_score_definition": CE_LOSS_SCORE_DEFINITION,
        "ce_loss_with_sae": flat["ce_loss_with_sae"],
        "ce_loss_without_sae": flat["ce_loss_without_sae"],
        "ce_loss_with_ablation": flat["ce_loss_with_ablation"],
        "eval_tokens": flat["total_tokens_eval_sparsity_variance"],
    }
