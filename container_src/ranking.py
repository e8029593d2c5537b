"""Which SAE features are specific to the prompts: firing statistics per source and censorship category, and each
feature's score, a lower bound on how many times more often it fires on a prompt token than on a TinyStories token
(`score`), overall and per category against the same stories.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STORIES = "control"  # the group of the control text's tokens
ALPHA = 0.05  # one-sided: the score is a 95% lower bound


class FeatureStats:
    """Running per-feature counts over groups of tokens: group 0 holds the stories, the others one prompt category
    each. Also keeps, over prompt tokens, the positions of each feature's strongest activations."""

    def __init__(self, d_sae: int, groups: list[str], top_k: int, device: str) -> None:
        import torch

        self.groups = groups
        self.top_k = top_k
        self.tokens = torch.zeros(len(groups), dtype=torch.long, device=device)
        self.fires = torch.zeros(len(groups), d_sae, dtype=torch.long, device=device)
        self.act_sum = torch.zeros(len(groups), d_sae, dtype=torch.float64, device=device)
        self.act_max = torch.zeros(len(groups), d_sae, device=device)
        self.top_values = torch.full((top_k, d_sae), -math.inf, device=device)
        self.top_positions = torch.full((top_k, d_sae), -1, dtype=torch.long, device=device)

    def add(self, acts: torch.Tensor, group: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """``acts`` [tokens, d_sae] with each token's ``group``; ``positions`` (prompt tokens only) index the tokens
        for the top-activation record."""
        import torch

        acts = acts.float()
        for g in group.unique().tolist():
            rows = acts[group == g]
            self.tokens[g] += rows.shape[0]
            self.fires[g] += (rows > 0).sum(0)
            self.act_sum[g] += rows.sum(0, dtype=torch.float64)
            self.act_max[g] = torch.maximum(self.act_max[g], rows.amax(0))
        if positions is not None and self.top_k:
            batch_top = acts.topk(min(self.top_k, acts.shape[0]), dim=0)
            values = torch.cat([self.top_values, batch_top.values])
            where = torch.cat([self.top_positions, positions[batch_top.indices]])
            merged = values.topk(self.top_k, dim=0)
            self.top_values, self.top_positions = merged.values, where.gather(0, merged.indices)


def score(fires_a: Any, tokens_a: int, fires_b: Any, tokens_b: int) -> Any:
    """ln of the one-sided 95% lower bound on the firing-rate ratio of side a over side b (elementwise over
    features), as a float64 array; NaN where a feature never fired on side a.

    For the prompts over the stories: the share of prompt tokens a feature fires on over the share of TinyStories
    tokens it fires on. Score > 0 says "fires more often on the prompts, with 95% confidence"; ranking by it keeps a
    feature seen on three prompt tokens from outranking one seen on three thousand. The bound is exact given the
    feature's total number of fires f = f_p + f_s: if fires are rare events (Poisson) at rates r_p and r_s over n_p
    and n_s tokens, then f_p given f is binomial with success probability π = n_p·θ / (n_p·θ + n_s), θ = r_p / r_s.
    Clopper–Pearson's lower bound on π, a Beta quantile, turns into one on θ:

        π_low = Beta(f_p, f_s + 1).ppf(0.05)        score = ln θ_low = ln(π_low / (1 − π_low)) + ln(n_s / n_p)

    No pseudo-counts are involved, so unequal token counts bias nothing (a prior worth one or two tokens tips the
    score of features that never fire on one side, by ln(n_s / n_p), or by the log of the pseudo-count's share, when
    one side is much smaller than the other: a small censorship category, say). A feature that never fired on the
    prompts has no lower bound above 0, and no score (None); one that fired on neither side is dead. Firing
    (activation > 0) rather than activation size, because features' scales differ and a TopK SAE decides per token
    which features fire.
    """
    import numpy as np
    from scipy.stats import beta

    f_a = np.asarray(fires_a, dtype=np.float64)
    f_b = np.asarray(fires_b, dtype=np.float64)
    fired = f_a > 0
    a = np.where(fired, f_a, 1.0)  # Beta needs a > 0; these entries are masked below
    # π_low and 1 − π_low, each from its own tail, so neither loses precision when π_low is near 0 or 1
    low, high = beta.ppf(ALPHA, a, f_b + 1), beta.isf(ALPHA, f_b + 1, a)
    # max(…, 1): a side with no tokens has no fires, so every entry is NaN and the ratio is never used
    return np.where(fired, np.log(low) - np.log(high) + np.log(tokens_b / max(tokens_a, 1)), np.nan)


def by_score(row: dict[str, Any]) -> float:
    """Sort key, highest score first; features without a score (never fired on the prompts) last."""
    return math.inf if row["score"] is None else -row["score"]


def rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def rank(stats: FeatureStats) -> list[dict[str, Any]]:
    """One row per feature, most prompt-specific first; features that never fired come last."""
    tokens, fires = stats.tokens.cpu(), stats.fires.cpu()
    act_sum, act_max = stats.act_sum.cpu(), stats.act_max.cpu()
    if int(tokens[0]) == 0 or int(tokens[1:].sum()) == 0:
        raise ValueError("ranking needs tokens from both the prompts and the stories")

    def side(rows: slice | int) -> dict[str, Any]:
        n = tokens[rows].sum() if isinstance(rows, slice) else tokens[rows]
        f = fires[rows].sum(0) if isinstance(rows, slice) else fires[rows]
        s = act_sum[rows].sum(0) if isinstance(rows, slice) else act_sum[rows]
        m = act_max[rows].amax(0) if isinstance(rows, slice) else act_max[rows]
        return {
            "tokens": int(n),
            "fires": f,
            "freq": f.double() / max(int(n), 1),
            "mean_act": s / max(int(n), 1),
            "max": m,
        }

    prompts, stories = side(slice(1, None)), side(0)
    overall = score(prompts["fires"], prompts["tokens"], stories["fires"], stories["tokens"])
    per_category = {}
    for g, name in enumerate(stats.groups[1:], start=1):  # a category with no tokens is kept, with no scores
        cat = side(g)
        cat["score"] = score(cat["fires"], cat["tokens"], stories["fires"], stories["tokens"])
        per_category[name] = cat

    rows = []
    for i in range(fires.shape[1]):
        dead = int(prompts["fires"][i]) == 0 and int(stories["fires"][i]) == 0
        rows.append(
            {
                "feature": i,
                "score": rounded(float(overall[i])),
                "freq_prompts": float(prompts["freq"][i]),
                "freq_stories": float(stories["freq"][i]),
                "fires_prompts": int(prompts["fires"][i]),
                "fires_stories": int(stories["fires"][i]),
                "mean_act_prompts": float(prompts["mean_act"][i]),
                "mean_act_stories": float(stories["mean_act"][i]),
                "max_act_prompts": float(prompts["max"][i]),
                "max_act_stories": float(stories["max"][i]),
                "dead": dead,
                "categories": {
                    name: {
                        "freq": float(cat["freq"][i]),
                        "mean_act": float(cat["mean_act"][i]),
                        "score": rounded(float(cat["score"][i])),
                    }
                    for name, cat in per_category.items()
                },
            }
        )
    rows.sort(key=lambda r: (r["dead"], by_score(r), r["feature"]))
    return rows
