"""ablation: removing an SAE feature, checked against SAE-Lens's own decode and plain TransformerLens hooks.

Two SAEs on the tiny random model: one trained by ``train`` (at blocks.2.mlp.hook_post, inside a block), and one
built here at hook_embed with a feature planted to fire exactly on one token id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from container_src.ablation import TOP_DROPPED, AblationBatch, ablate, feature_delta, splice_hook
from container_src.model import load_model
from container_src.synthetic import DEFAULT_MODEL_NAME, make_stories
from tests.conftest import TINY_RUN, make_opt_ml, run_container, write_hyperparameters

T = 48  # tokens per row


@pytest.fixture(scope="module")
def lm(tiny_assets: dict[str, Path]) -> Any:
    return load_model(DEFAULT_MODEL_NAME, "cpu")


@pytest.fixture(scope="module")
def trained_sae(tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict[str, Path]) -> Any:
    """A TopK SAE that train fitted to the tiny model's blocks.2.mlp.hook_post."""
    from sae_lens import SAE

    base = make_opt_ml(tmp_path_factory.mktemp("ablation") / "opt_ml", tiny_assets)
    write_hyperparameters(base, {**TINY_RUN, "training_tokens": "8192"})
    result = run_container(base, "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sae = SAE.load_from_disk(str(base / "model"), device="cpu")
    assert sae.cfg.metadata.hook_name == "blocks.2.mlp.hook_post"
    return sae


def _rows(lm: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One text per row: BOS, its first tokens, then BOS padding; and the positions that have a next token."""
    bos = lm.tokenizer.bos_token_id
    tokens = torch.full((len(texts), T), bos, dtype=torch.long)
    valid = torch.zeros(len(texts), T, dtype=torch.bool)
    for row, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][: T - 1 - row % 5]  # uneven lengths
        tokens[row, 1 : 1 + len(ids)] = torch.tensor(ids)
        valid[row, : len(ids)] = True  # position t predicts tokens[t + 1], the last real token at the latest
    return tokens, valid


def _make_sae(d_in: int, d_sae: int, hook_name: str, **cfg: Any) -> Any:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    metadata = SAEMetadata(hook_name=hook_name, model_name=DEFAULT_MODEL_NAME)
    return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, device="cpu", metadata=metadata, **cfg))


PLANTED = 3  # the planted feature of the hook_embed SAE


def _kept(lm: Any, text: str) -> set[int]:
    """The token ids of ``text`` that every row of _rows keeps."""
    return set(lm.tokenizer(text, add_special_tokens=False)["input_ids"][: T - 5])


@pytest.fixture(scope="module")
def planted(lm: Any) -> tuple[Any, int]:
    """An SAE at hook_embed (k = d_sae: plain ReLU) whose feature PLANTED fires exactly where the token is X, with
    the token's whole embedding as its decoder row (removing it removes the token); returns it and X."""
    stories = make_stories(12, seed=11)
    embed = lm.W_E.detach()
    unit = embed / embed.norm(dim=-1, keepdim=True)
    # per token x, the largest projection of another token's embedding on x's direction, relative to |E[x]|
    reach = (embed @ unit.T).fill_diagonal_(-torch.inf).max(0).values / embed.norm(dim=-1)
    candidates = [  # tokens of story 0's row, absent from story 1, in the rows of at least two others
        t
        for t in _kept(lm, stories[0]) - set(lm.tokenizer(stories[1], add_special_tokens=False)["input_ids"])
        if sum(t in _kept(lm, s) for s in stories[2:]) >= 2
    ]
    x = min(candidates, key=lambda t: float(reach[t]))
    assert reach[x] < 0.45, "no token of story 0 stands clear of the others in the embedding"
    sae = _make_sae(lm.cfg.d_model, 16, "hook_embed", k=16)
    with torch.no_grad():
        # pre-activation 2·(E[t]·u) - |E[x]|: |E[x]| at x, below 0 at every other token (reach < 0.5)
        sae.W_enc[:, PLANTED] = 2 * unit[x]
        sae.b_enc[PLANTED] = -embed[x].norm()
        sae.W_dec[PLANTED] = unit[x]
    return sae, x


def _reference_splice(sae: Any, feature: int | None) -> Any:
    """The textbook splice, from SAE-Lens's encode and decode only: the reconstruction with the feature zeroed, plus
    the error of the full reconstruction. Each decode follows its own encode (a normalising SAE keeps state)."""

    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        recon = sae.decode(sae.encode(x))
        acts = sae.encode(x)
        if feature is not None:
            acts[..., feature] = 0
        return sae.decode(acts) + (x - recon)

    return hook


def _loss_per_token(lm: Any, tokens: torch.Tensor, hooks: list[tuple[str, Any]] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return lm.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks or [])


def _fires(lm: Any, sae: Any, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, d_sae]: where each feature is nonzero, from a plain cache."""
    hook_name = sae.cfg.metadata.hook_name
    with torch.no_grad():
        _, cache = lm.run_with_cache(tokens, names_filter=[hook_name])
        return sae.encode(cache[hook_name]) != 0


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale", "layer_norm"])
@pytest.mark.parametrize("rescale", [False, True])
def test_the_change_is_what_sae_lens_decode_gives(norm: str, rescale: bool) -> None:
    """docs/viz.md: "That is exactly `decode(f with f_i = 0) + (x − decode(f))`"
    feature_delta equals decode(f) - decode(f without the features), whatever normalisation the SAE applies."""
    sae = _make_sae(32, 64, "blocks.0.hook_resid_pre", k=12, normalize_activations=norm,
                    rescale_acts_by_decoder_norm=rescale)  # fmt: skip
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(64, 1) * 3)  # rows of unequal norms
        x = torch.randn(5, 7, 32) * 4 + 1
        for features in ([int(sae.encode(x)[0, 0].argmax())], [1, 5, 9, 40]):
            acts = sae.encode(x)
            full = sae.decode(acts)
            zeroed = sae.encode(x)  # a normalising SAE carries the input's scale from encode to decode
            zeroed[..., features] = 0
            expected = full - sae.decode(zeroed)
            assert expected.abs().max() > 0
            got = feature_delta(sae, x, acts[..., features], features)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(feature_delta(sae, x, acts[..., []], []), torch.zeros_like(x))


@pytest.mark.slow
def test_nothing_removed_gives_the_clean_loss(lm: Any, trained_sae: Any) -> None:
    """docs/viz.md: "the reconstruction without the feature plus everything the SAE misses" """
    tokens, _ = _rows(lm, make_stories(6, seed=2))
    hook_name = trained_sae.cfg.metadata.hook_name
    clean = _loss_per_token(lm, tokens)
    # the splice with no feature removed is the model itself, bit for bit
    assert torch.equal(_loss_per_token(lm, tokens, [(hook_name, splice_hook(trained_sae, []))]), clean)
    # the textbook form, reconstruction plus error, to rounding
    textbook = _loss_per_token(lm, tokens, [(hook_name, _reference_splice(trained_sae, None))])
    torch.testing.assert_close(textbook, clean, rtol=0, atol=1e-4)
    # removing a feature: the splice and the textbook form agree
    feature = int(_fires(lm, trained_sae, tokens).sum((0, 1)).argmax())
    mine = _loss_per_token(lm, tokens, [(hook_name, splice_hook(trained_sae, [feature]))])
    textbook = _loss_per_token(lm, tokens, [(hook_name, _reference_splice(trained_sae, feature))])
    assert not torch.equal(mine, clean)
    torch.testing.assert_close(mine, textbook, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_feature_that_never_fires_on_a_side_changes_nothing_there(lm: Any, trained_sae: Any) -> None:
    """docs/viz.md: "A side where the feature fires nowhere in its sequences gets exactly 0" """
    tokens, valid = _rows(lm, make_stories(16, seed=4))
    fires = _fires(lm, trained_sae, tokens)  # [B, T, d_sae]
    rows_firing = fires.any(1)  # [B, d_sae]
    # a feature that fires in some rows and not at all in at least four others
    n_rows = rows_firing.sum(0)
    feature = int(torch.where((n_rows >= 2) & (n_rows <= 12), n_rows, 0).argmax())
    on = rows_firing[:, feature]
    assert 2 <= int(on.sum()) <= 12
    sides = {"fires": valid & on[:, None], "quiet": valid & ~on[:, None]}
    batch = AblationBatch(tokens, sides, torch.arange(len(tokens)))
    result = ablate(lm, trained_sae, trained_sae.cfg.metadata.hook_name, [batch], [feature])[feature]

    quiet = result["quiet"]
    assert quiet["tokens"] == int(sides["quiet"].sum()) and quiet["prompts"] == int((~on).sum())
    assert quiet["mean_delta_loss"] == 0.0 and quiet["prompt_mean_delta_loss"] == 0.0
    assert quiet["prompts_loss_up"] == 0 and quiet["fires_tokens"] == 0
    loud = result["fires"]
    assert loud["mean_delta_loss"] != 0.0
    assert loud["fires_tokens"] == int((fires[..., feature] & sides["fires"]).sum()) > 0


@pytest.mark.slow
def test_ablate_matches_a_recomputation_with_transformer_lens_hooks(lm: Any, trained_sae: Any) -> None:
    """docs/viz.md: "with the feature removed minus the loss of the clean model, in nats per token"
    The pooled Δloss, the firing counts and the dropped tokens, recomputed with TransformerLens's own per-token
    loss and the textbook splice; the rows come in two batches."""
    tokens, valid = _rows(lm, make_stories(10, seed=6))
    hook_name = trained_sae.cfg.metadata.hook_name
    fires = _fires(lm, trained_sae, tokens)
    feature = int(fires.sum((0, 1)).argmax())
    first = torch.arange(len(tokens)) < 4
    sides = {"first": valid & first[:, None], "rest": valid & ~first[:, None]}
    batches = [AblationBatch(tokens[r], {s: m[r] for s, m in sides.items()}, torch.arange(10)[r]) for r in
               (slice(0, 6), slice(6, 10))]  # fmt: skip
    result = ablate(lm, trained_sae, hook_name, batches, [feature], top_tokens=5)[feature]

    delta = _loss_per_token(lm, tokens, [(hook_name, _reference_splice(trained_sae, feature))]) - _loss_per_token(
        lm, tokens
    )  # [B, T-1]
    for side, mask in sides.items():
        counted = mask[:, :-1]
        assert result[side]["tokens"] == int(counted.sum())
        assert result[side]["mean_delta_loss"] == pytest.approx(float(delta[counted].mean()), rel=1e-3, abs=1e-6)
        assert result[side]["fires_tokens"] == int((fires[:, :-1, feature] & counted).sum())
    # the next tokens whose log-probability falls most, most first, each with its own mean and count
    counted = valid[:, :-1]
    next_ids, drop = tokens[:, 1:][counted], -delta[counted]
    dropped = result[TOP_DROPPED]
    assert dropped and [d["mean_delta_logprob"] for d in dropped] == sorted(d["mean_delta_logprob"] for d in dropped)
    for entry in dropped:
        mine = next_ids == entry["id"]
        assert entry["count"] == int(mine.sum()) and entry["token"] == lm.tokenizer.decode([entry["id"]])
        assert entry["mean_delta_logprob"] == pytest.approx(float(drop[mine].mean()), rel=1e-3, abs=1e-6)
    means = sorted(float(drop[next_ids == t].mean()) for t in next_ids.unique())
    assert [d["mean_delta_logprob"] for d in dropped] == pytest.approx(means[: len(dropped)], rel=1e-3, abs=1e-6)


def test_a_planted_feature_changes_the_loss_only_where_it_fires(lm: Any, planted: tuple[Any, int]) -> None:
    """docs/viz.md: "Wherever `f_i` is zero the activations are left bit for bit as they were" """
    sae, x = planted
    tokens, valid = _rows(lm, make_stories(12, seed=11)[:2])
    assert torch.equal(_fires(lm, sae, tokens)[..., PLANTED], tokens == x)  # the plant: exactly on token x
    sides = {
        "with": valid & torch.tensor([True, False])[:, None],
        "without": valid & torch.tensor([False, True])[:, None],
    }
    assert (tokens[0][valid[0]] == x).any() and not (tokens[1] == x).any()
    result = ablate(lm, sae, "hook_embed", [AblationBatch(tokens, sides, torch.tensor([0, 1]))], [PLANTED])[PLANTED]
    assert result["with"]["mean_delta_loss"] != 0.0 and result["with"]["prompts"] == 1
    assert result["with"]["fires_tokens"] == int(((tokens == x) & sides["with"]).sum()) > 0
    assert result["without"]["mean_delta_loss"] == 0.0 and result["without"]["fires_tokens"] == 0


def test_figures_per_document(lm: Any, planted: tuple[Any, int]) -> None:
    """docs/viz.md: "the mean over those documents of each document's mean Δloss: every document weighs the same"
    Documents A (two rows), B and C (in a second batch): the feature fires in A and C, never in B. The mean over
    documents weighs each document once; the pooled mean weighs each token."""
    sae, x = planted
    stories = make_stories(12, seed=11)
    with_x = [s for s in stories if x in _kept(lm, s)]
    without = [s for s in stories if x not in lm.tokenizer(s, add_special_tokens=False)["input_ids"]]
    assert len(with_x) >= 3 and without
    tokens, valid = _rows(lm, [with_x[0], with_x[1], without[0], with_x[2]])
    docs = torch.tensor([0, 0, 1, 2])
    per_doc = {f"doc{d}": valid & (docs == d)[:, None] for d in range(3)}
    sides = {"all": valid, **per_doc}
    batches = [
        AblationBatch(tokens[:3], {s: m[:3] for s, m in sides.items()}, docs[:3]),
        AblationBatch(tokens[3:], {s: m[3:] for s, m in sides.items()}, docs[3:]),
    ]
    result = ablate(lm, sae, "hook_embed", batches, [PLANTED])[PLANTED]
    doc_means = [result[f"doc{d}"]["mean_delta_loss"] for d in range(3)]
    doc_tokens = [result[f"doc{d}"]["tokens"] for d in range(3)]
    assert doc_means[1] == 0.0 and doc_means[0] != 0.0 and doc_means[2] != 0.0
    assert [result[f"doc{d}"]["prompts"] for d in range(3)] == [1, 1, 1]
    assert doc_tokens == [int(valid[:2].sum()), int(valid[2].sum()), int(valid[3].sum())]

    every = result["all"]
    assert every["tokens"] == sum(doc_tokens) and every["prompts"] == 3
    assert every["prompts_loss_up"] == sum(m > 0 for m in doc_means)
    prompt_mean = sum(doc_means) / 3
    pooled = sum(m * n for m, n in zip(doc_means, doc_tokens, strict=True)) / sum(doc_tokens)
    assert every["prompt_mean_delta_loss"] == pytest.approx(prompt_mean, rel=1e-4)
    assert every["mean_delta_loss"] == pytest.approx(pooled, rel=1e-4)
    assert every["prompt_mean_delta_loss"] != pytest.approx(every["mean_delta_loss"], rel=1e-3)


def test_positions_without_a_next_token_never_count_and_bad_input_is_refused(lm: Any, planted: tuple[Any, int]) -> None:
    """docs/viz.md: "positions counted (each predicts a next token that is part of the side)" """
    sae, _ = planted
    tokens, _ = _rows(lm, make_stories(3, seed=1))
    everything = torch.ones_like(tokens, dtype=torch.bool)
    result = ablate(lm, sae, "hook_embed", [AblationBatch(tokens, {"all": everything}, torch.arange(3))], [PLANTED])
    assert result[PLANTED]["all"]["tokens"] == 3 * (T - 1)

    def refused(match: str, **change: Any) -> None:
        args: dict[str, Any] = {"tokens": tokens, "sides": {"all": everything}, "docs": torch.arange(3)}
        features = change.pop("features", [PLANTED])
        with pytest.raises(ValueError, match=match):
            ablate(lm, sae, "hook_embed", [AblationBatch(**{**args, **change})], features)

    refused(r"side 'all' must be a bool mask shaped like tokens \(3, 48\)", sides={"all": everything[:, 1:]})
    refused("side 'all' must be a bool mask", sides={"all": everything.long()})
    refused("a side may not be named 'top_dropped'", sides={TOP_DROPPED: everything})
    refused("docs must hold one document index >= 0 per row", docs=torch.tensor([0, -1, 2]))
    refused(r"features \[16\] are out of range: this SAE has 16", features=[16])
