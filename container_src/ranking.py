"""Which SAE features are specific to the prompts: firing statistics per source and category, and their score.

The score of a feature is the smoothed log-odds ratio of it firing on a prompt token rather than on a TinyStories
token, ranked by the lower end of its one-sided 95% confidence interval. With n_p prompt and n_s story tokens:

    a = fires on prompts + w_p        b = prompt tokens where it is silent + w_p        w_p = n_p / (n_p + n_s)
    c = fires on stories + w_s        d = story tokens where it is silent + w_s         w_s = n_s / (n_p + n_s)
    log_odds = ln(a/b) − ln(c/d)        score = log_odds − 1.645 · √(1/a + 1/b + 1/c + 1/d)

Firing (activation > 0) rather than activation size, because features' scales differ and a TopK SAE decides per
token which features fire. Log-odds rather than a frequency ratio, because it is symmetric and does not saturate for
features that fire often. The pseudo-counts keep features that never fire on one side finite; they add up to 2 as
Haldane–Anscombe's ½ per cell do (the same when both sides have as many tokens), but each side's share follows its
token count, so a feature with no fires on either side scores a log-odds of 0 however unequal the sides are. (A
plain ½ gives it ln(n_s / n_p), so features that never fired on a small category would rank as specific to it.)
Ranking by the lower bound keeps a feature seen on three prompt tokens from outranking one seen on three thousand.
The same score is computed per censorship category, against the same stories.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STORIES = "tinystories"
Z_ONE_SIDED_95 = 1.645


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


def log_odds(fires_a: Any, tokens_a: int, fires_b: Any, tokens_b: int) -> tuple[Any, Any]:
    """Smoothed log-odds ratio of firing in a versus b, and its one-sided 95% lower bound (elementwise); the
    pseudo-counts are split between the sides by their token counts (see the module's docstring)."""
    import torch

    fires_a = torch.as_tensor(fires_a, dtype=torch.float64)
    fires_b = torch.as_tensor(fires_b, dtype=torch.float64)
    w_a, w_b = tokens_a / (tokens_a + tokens_b), tokens_b / (tokens_a + tokens_b)
    a, b = fires_a + w_a, tokens_a - fires_a + w_a
    c, d = fires_b + w_b, tokens_b - fires_b + w_b
    ratio = torch.log(a / b) - torch.log(c / d)
    return ratio, ratio - Z_ONE_SIDED_95 * torch.sqrt(1 / a + 1 / b + 1 / c + 1 / d)


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
    overall, overall_score = log_odds(prompts["fires"], prompts["tokens"], stories["fires"], stories["tokens"])
    per_category = {}
    for g, name in enumerate(stats.groups[1:], start=1):
        cat = side(g)
        if cat["tokens"]:
            cat["log_odds"], cat["score"] = log_odds(cat["fires"], cat["tokens"], stories["fires"], stories["tokens"])
            per_category[name] = cat

    rows = []
    for i in range(fires.shape[1]):
        dead = int(prompts["fires"][i]) == 0 and int(stories["fires"][i]) == 0
        rows.append(
            {
                "feature": i,
                "score": round(float(overall_score[i]), 4),
                "log_odds": round(float(overall[i]), 4),
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
                        "log_odds": round(float(cat["log_odds"][i]), 4),
                        "score": round(float(cat["score"][i]), 4),
                    }
                    for name, cat in per_category.items()
                },
            }
        )
    rows.sort(key=lambda r: (r["dead"], -r["score"], r["feature"]))
    return rows
