"""viz's contract, checked on an untrained SAE (random TopK weights, no training run): where the SAE comes from,
the checks before the model loads, what `summary.json` and the tables say, and how the output folder is replaced."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from container_src import data, viz
from container_src.config import ConfigError, Resolved, VizConfig
from container_src.paths import ContainerPaths
from container_src.prompts import HELDOUT_FILE
from tests.conftest import SAMPLE_PROMPTS, make_opt_ml

HOOK = "blocks.2.mlp.hook_post"
MODEL = "roneneldan/TinyStories-33M"
D_SAE = 64
CONTEXT = 48  # the SAE's training context: neither viz's fallback (128) nor the smoke preset's (64)
SMALL = {"device": "cpu", "prompt_tokens": 3000, "story_tokens": 2000, "min_prompts": 2, "ablate_top": 2}


def _save_sae(folder: Path, d_in: int = 256, context_size: int | None = CONTEXT) -> Path:
    """A TopK SAE with random weights (k=4: every token fires 4 features), saved as train saves one."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, model_name=MODEL, context_size=context_size)
    sae = TopKSAE(
        TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=True, device="cpu", metadata=meta)
    )
    sae.save_model(str(folder))
    return folder


@pytest.fixture
def tree(tmp_path: Path, tiny_assets: dict[str, Path]) -> Path:
    """A SageMaker tree with the shipped prompts and a random SAE in channel sae."""
    base = make_opt_ml(tmp_path / "opt_ml", tiny_assets)
    _save_sae(base / "input" / "data" / "sae")
    return base


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict[str, Path]) -> dict[str, Any]:
    """One viz run over a tree whose model/ holds an earlier run's dashboards and a stale staging
    folder; returns the tree, the summary returned and the tables written."""
    base = make_opt_ml(tmp_path_factory.mktemp("viz-contract") / "opt_ml", tiny_assets)
    _save_sae(base / "input" / "data" / "sae")
    out = base / "model" / "dashboards"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("an earlier run's")
    (base / "model" / ".dashboards-staging").mkdir()
    (base / "model" / ".dashboards-staging" / "half.txt").write_text("a crashed run's")
    cfg = VizConfig(**SMALL, n_features=3, features=str(D_SAE - 1), top_snippets=3)  # type: ignore[arg-type]
    summary = viz.run_viz(Resolved(cfg, mode="viz"), ContainerPaths(base))
    return {
        "base": base,
        "summary": summary,
        "written": json.loads((out / "summary.json").read_text()),
        "rows": json.loads((out / "features.json").read_text()),
    }


def test_the_sae_comes_from_channel_sae_else_from_model(tmp_path: Path) -> None:
    """docs/viz.md: "Finds the SAE (channel `sae`, a folder or a `model.tar.gz`, else the tree's own `model/`)"
    Channel sae first; then model/ when it holds an SAE (cfg.json) or a multi-SAE job (saes.json); else a refusal
    that says what to pass."""
    paths = ContainerPaths(tmp_path)
    with pytest.raises(ConfigError) as info:
        viz.sae_source(paths)
    assert "no SAE: channel sae" in str(info.value) and "or run train first" in str(info.value)
    for record in ("cfg.json", "saes.json"):
        paths.model_dir.mkdir(exist_ok=True)
        (paths.model_dir / record).write_text("{}")
        assert viz.sae_source(paths) == paths.model_dir
        (paths.model_dir / record).unlink()
    (paths.model_dir / "cfg.json").write_text("{}")
    channel = tmp_path / "input" / "data" / "sae"
    channel.mkdir(parents=True)
    (channel / "cfg.json").write_text("{}")
    assert viz.sae_source(paths) == channel


def test_the_last_feature_id_is_accepted_and_the_next_refused(tree: Path) -> None:
    """docs/viz.md: "Feature ids, the `contrasts` key ... are checked before anything heavy is loaded"
    An SAE of 64 features has ids 0 to 63."""
    paths = ContainerPaths(tree)
    with pytest.raises(ConfigError) as info:
        viz.check_inputs(VizConfig(features=f"5,{D_SAE}"), paths, tree / "scratch")
    assert f"[{D_SAE}] out of range; this SAE has {D_SAE} (0-{D_SAE - 1})" in str(info.value)
    inputs = viz.check_inputs(VizConfig(features=str(D_SAE - 1)), paths, tree / "scratch")
    assert inputs.sae_cfg["d_sae"] == D_SAE and inputs.hook_name == HOOK and inputs.model_name == MODEL


def test_default_contrasts_come_first_and_from_every_prompt(tree: Path) -> None:
    """docs/viz.md: "Category contrasts come from every prompt's categories, so one that the chosen prompt set lacks"
    With a held-out record of official-narrative prompts only, the refusal contrasts are still planned (to be
    listed as skipped); response vs question is planned (the prompts record both parts); the user's contrasts come
    after the defaults, so the first contrast, which orders the tables, stays prompts vs stories."""
    from datasets import load_from_disk

    prompts = load_from_disk(str(tree / "input" / "data" / "prompts"))
    narrative = [i for i, c in zip(prompts["id"], prompts["category"], strict=True) if c == "official narrative"]
    sae = tree / "input" / "data" / "sae"
    (sae / HELDOUT_FILE).write_text(json.dumps({"heldout_ids": narrative[:12]}))
    cfg = VizConfig(contrasts="mine: category=refusal vs stories")
    inputs = viz.check_inputs(cfg, ContainerPaths(tree), tree / "scratch")
    assert inputs.prompt_set["used"] == "heldout" and len(inputs.prompts) == 12
    assert set(inputs.prompts["category"]) == {"official narrative"}
    names = [c.name for c in inputs.contrasts]
    assert names[0] == "prompts_vs_stories" and names[-1] == "mine"
    assert {"category[refusal]_vs_others", "response_vs_question", "response_vs_question[refusal]"} <= set(names)


def test_the_context_comes_from_the_sae_and_the_widths_are_checked(tree: Path, tmp_path: Path) -> None:
    """docs/viz.md: "the model, the hook and the training context come from the SAE's own metadata"
    The training context of the SAE's metadata, else 128, unless context_size is given; one larger than the model's
    is refused; an SAE whose width differs from the hook's is refused with both widths."""
    paths = ContainerPaths(tree)
    inputs = viz.check_inputs(VizConfig(device="cpu"), paths, tmp_path / "scratch")
    assert viz.load_models(VizConfig(device="cpu"), inputs).context_size == CONTEXT
    assert viz.load_models(VizConfig(device="cpu", context_size=20), inputs).context_size == 20
    with pytest.raises(ConfigError, match="context_size=100000: the model's context is only"):
        viz.load_models(VizConfig(device="cpu", context_size=100_000), inputs)

    sae = tree / "input" / "data" / "sae"
    shutil.rmtree(sae)
    _save_sae(sae, context_size=None)
    inputs = viz.check_inputs(VizConfig(device="cpu"), paths, tmp_path / "scratch")
    assert viz.load_models(VizConfig(device="cpu"), inputs).context_size == 128

    shutil.rmtree(sae)
    _save_sae(sae, d_in=128)
    inputs = viz.check_inputs(VizConfig(device="cpu"), paths, tmp_path / "scratch")
    with pytest.raises(ConfigError, match=f"the SAE reads 128 values at {HOOK}, but {MODEL} has 256 there"):
        viz.load_models(VizConfig(device="cpu"), inputs)


def test_nothing_to_render_writes_no_dashboard_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/viz.md: "Not written when there is nothing to render (`n_features=0` and no `features`, or no feature"
    The model, the SAE and the corpus are not needed when nothing is rendered (None here)."""
    none = cast(Any, None)
    rows = [{"feature": 0, "dead": False}, {"feature": 1, "dead": True}]
    caplog.set_level(logging.WARNING)
    chosen = viz.render_dashboards(VizConfig(n_features=0), none, none, none, rows, {"a": [0]}, tmp_path)
    assert chosen == [] and not (tmp_path / "dashboard.html").exists()
    assert "n_features=0 and no --features: no dashboards to render" in caplog.text
    caplog.clear()
    assert viz.render_dashboards(VizConfig(), none, none, none, rows, {}, tmp_path) == []
    assert "every contrast was skipped (see summary.json)" in caplog.text
    assert "no feature fired on the prompts: no dashboards to render" in caplog.text
    assert not (tmp_path / "dashboard.html").exists()


def test_the_folder_is_replaced_whole_and_staging_is_gone(run: dict[str, Any]) -> None:
    """docs/viz.md: "The folder is replaced only when a viz run completes."
    An earlier run's file is gone, a stale staging folder from a crashed run is cleared, not published."""
    model = run["base"] / "model"
    assert sorted(p.name for p in (model / "dashboards").iterdir()) == [
        "dashboard.html",
        "features.csv",
        "features.json",
        "index.html",
        "summary.json",
    ]
    assert sorted(p.name for p in model.iterdir()) == ["dashboards"]
    assert run["summary"] == run["written"]
    assert f"SAE features: {HOOK}" in (model / "dashboards" / "dashboard.html").read_text()


def test_summary_names_the_sae_and_counts_the_tokens(run: dict[str, Any]) -> None:
    """docs/viz.md: "`summary.json` | the SAE, token counts per source and category"
    The SAE as its cfg.json says; the tokens the caps took, per source and per category, at the SAE's context."""
    summary, base = run["written"], run["base"]
    assert summary["sae"] == {
        "source": str(base / "input" / "data" / "sae"),
        "model_name": MODEL,
        "model_weights": MODEL,
        "prompt_rendering": summary["sae"]["prompt_rendering"],
        "hook_name": HOOK,
        "d_in": 256,
        "d_sae": D_SAE,
    }
    tokens = summary["tokens"]
    assert (tokens["prompts"], tokens["stories"], tokens["context_size"]) == (3000, 2000, CONTEXT)
    assert sum(tokens["categories"].values()) == 3000 and set(tokens["categories"]) == {"official narrative", "refusal"}
    used = tokens["prompts_by_category"]
    assert sum(u["used"] for u in used.values()) == tokens["prompts_used"] and 0 < tokens["prompts_used"] < 95
    assert tokens["prompt_row_width"] <= CONTEXT
    story_positions = summary["positions"] - tokens["prompts_used"] * tokens["prompt_row_width"]
    assert story_positions % CONTEXT == 0 and 2000 < story_positions < 2000 * CONTEXT / (CONTEXT - 10)
    assert summary["prompt_set"]["used"] == "all" and summary["prompt_set"]["prompts"] == 95
    control = data.load_control(base / "input" / "data" / "control", "roneneldan/TinyStories", "train", "text")
    assert summary["stories_source"] == control[1] and control[1].startswith("channel:")
    assert summary["config"]["n_features"] == 3 and summary["config"]["features"] == str(D_SAE - 1)


def test_per_side_counts_match_the_token_table(run: dict[str, Any]) -> None:
    """docs/viz.md: "Per contrast side and per feature it counts the prompts (story documents for the stories)"
    prompts vs stories reads every counted prompt token and every story token: its tokens fired on each side are the
    token table's `fires_prompts` and `fires_stories`, and it fires on no more prompts than tokens."""
    checked = 0
    for row in run["rows"]:
        figures = row["contrasts"]["prompts_vs_stories"]
        if figures is None:
            assert row["fires_prompts"] == row["fires_stories"] == 0
            continue
        assert (figures["tokens_fired_a"], figures["tokens_fired_b"]) == (row["fires_prompts"], row["fires_stories"])
        assert figures["prompts_fired_a"] <= min(figures["tokens_fired_a"], figures["prompts_a"])
        assert figures["prompts_fired_b"] <= min(figures["tokens_fired_b"], figures["prompts_b"])
        checked += figures["tokens_fired_b"] > 0 and figures["tokens_fired_a"] > 0
    assert checked >= 10
    assert sum(r["fires_prompts"] for r in run["rows"]) == 4 * 3000  # k = 4 features on every counted token


def test_features_come_in_the_first_contrasts_order(run: dict[str, Any]) -> None:
    """docs/viz.md: "every feature, in the first contrast's order (prompts vs stories, per prompt)"
    Ranked features first, by that contrast's rank; then the others; dead features last. summary.json's top 10
    are the first 10 rows, and each contrast's top 10 its ten best ranks."""
    rows, summary = run["rows"], run["written"]
    ranks = [r["contrasts"]["prompts_vs_stories"]["rank"] for r in rows if r["contrasts"]["prompts_vs_stories"]]
    scored = [r for r in rows if (r["contrasts"]["prompts_vs_stories"] or {}).get("score") is not None]
    assert len(scored) >= 10 and ranks[: len(scored)] == list(range(1, len(scored) + 1))
    dead = [r["dead"] for r in rows]
    assert dead == sorted(dead) and summary["dead_features"] == sum(dead)
    assert [t["feature"] for t in summary["top"]] == [r["feature"] for r in rows[:10]]
    for entry in summary["contrasts"]:
        if entry["skipped"]:
            assert entry["top"] == [] and entry["ablated"] is None
            continue
        figures = {r["feature"]: r["contrasts"][entry["name"]] for r in rows if r["contrasts"][entry["name"]]}
        best = sorted((f for f, v in figures.items() if v["score"] is not None), key=lambda f: figures[f]["rank"])
        assert entry["top"] == best[:10] and len(entry["top"]) == 10
        assert entry["ablated"]["features"] == 2
    first = summary["contrasts"][0]
    assert first["name"] == "prompts_vs_stories" and [r["feature"] for r in rows[:10]] == first["top"]


def test_rendered_features_and_timings(run: dict[str, Any]) -> None:
    """docs/viz.md: "dead features (never fired on these tokens), what was rendered, timings"
    n_features=3: each contrast's best in turn, then the feature asked for by id; the timings add up."""
    summary = run["written"]
    ran = [c["top"] for c in summary["contrasts"] if not c["skipped"]]
    assert summary["rendered"][:3] == list(dict.fromkeys(t[0] for t in ran))[:3]
    assert summary["rendered"][-1] == D_SAE - 1 and len(summary["rendered"]) in (3, 4)
    seconds = summary["seconds"]
    assert set(seconds) == {"ranking", "ablation", "dashboards", "total"}
    assert all(0 < seconds[k] < seconds["total"] for k in ("ranking", "ablation", "dashboards"))
    assert seconds["ranking"] + seconds["ablation"] + seconds["dashboards"] <= seconds["total"] < 600


def test_snippets_show_where_the_feature_fires_most(run: dict[str, Any]) -> None:
    """docs/viz.md: "the prompt's id, category and activation, and the text around the strongest token"
    Recomputed without viz's code: each snippet's activation is the feature's strongest on that prompt (BOS, the
    prompt, cut at the context), and its token is the token there."""
    from datasets import load_from_disk
    from sae_lens import SAE

    import container_src.model

    base = run["base"]
    channel = load_from_disk(str(base / "input" / "data" / "prompts"))
    texts = dict(zip(channel["id"], channel["text"], strict=True))
    lm = container_src.model.load_model(MODEL, "cpu")
    sae = SAE.load_from_disk(str(base / "input" / "data" / "sae"), device="cpu")
    for row in run["rows"]:  # the 4 × top_snippets strongest tokens kept are enough here for 3 distinct prompts
        fired = row["contrasts"]["prompts_vs_stories"]["prompts_fired_a"] if row["fires_prompts"] else 0
        assert len({s["prompt_id"] for s in row["snippets"]}) == len(row["snippets"]) == min(3, fired)
    checked = 0
    for row in run["rows"][:3]:
        for shown in row["snippets"]:
            ids = lm.to_tokens(str(texts[shown["prompt_id"]]))[:, :CONTEXT]
            with torch.no_grad():
                _, cache = lm.run_with_cache(ids, names_filter=[HOOK])
                acts = sae.encode(cache[HOOK])[0, 1:, row["feature"]]
            strongest = int(acts.argmax())
            assert shown["activation"] == pytest.approx(float(acts[strongest]), abs=2e-3)
            assert shown["token"] == lm.tokenizer.decode([int(ids[0, 1 + strongest])])  # type: ignore[union-attr]
            checked += 1
    assert checked == 9


def test_features_follow_the_first_contrast_that_ran_even_without_the_stories(tiny_assets: dict[str, Path]) -> None:
    """docs/viz.md: "every feature, in the first contrast's order"
    Counts made by hand, no model: the first contrast (category a vs b) ranks its features; a live feature it never
    saw (it fired on the stories only) comes after every feature it ranked, and a dead one last. Each contrast's
    ranking lists only features with a score, best first."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from container_src.contrast_stats import PART_ORDER, SideStats, plan
    from container_src.contrasts import Contrast, Filter, Selection
    from container_src.ranking import FeatureStats
    from container_src.sequences import PromptRows

    n, width = 12, 5  # 12 prompts of 4 tokens after BOS; prompts 0-5 in category a, 6-11 in b
    prompt = torch.zeros(n, width, dtype=torch.bool)
    prompt[:, 1:] = True
    docs = torch.where(prompt, torch.arange(n).unsqueeze(1), torch.tensor(-1))
    rows = PromptRows(torch.full((n, width), 464), docs, {"prompt": prompt, "question": prompt, "response": prompt})
    columns = [{"category": "a" if i < 6 else "b"} for i in range(n)]
    wanted = [
        Contrast(
            "first", Selection(filters=(Filter("category", ("a",)),)), Selection(filters=(Filter("category", ("b",)),))
        ),
        Contrast("p_vs_s", Selection(), Selection(source="stories")),
    ]
    layout = plan(wanted, columns, rows, story_docs=6, story_tokens=24, min_prompts=2)
    # features: 0 fires on every a prompt; 1 on every b prompt; 2 on the stories only; 3 never; 4 on two a
    # prompts, more strongly on the second
    feats = torch.zeros(n, width, 5)
    feats[:6, 2, 0] = 1.0
    feats[6:, 3, 1] = 1.0
    feats[:2, 1, 4] = torch.tensor([2.0, 3.0])
    stories = torch.zeros(24, 5)
    stories[::4, 2] = 1.0
    sides = SideStats(layout, 5, "cpu")
    sides.add_prompts(feats, torch.arange(n), torch.stack([rows.parts[p] for p in PART_ORDER], dim=1).float())
    sides.add_stories(stories, torch.arange(24) // 4)
    stats = FeatureStats(5, ["control", "a", "b"], top_k=4, device="cpu")
    group = torch.tensor([1] * 6 + [2] * 6).unsqueeze(1).expand(n, width)
    stats.add(feats[prompt], group[prompt], torch.arange(n * width).view(n, width)[prompt])
    stats.add(stories, torch.zeros(24, dtype=torch.long))
    corpus = SimpleNamespace(
        prompt_tokens=rows.tokens, prompt_docs=docs, prompt_meta=[{"prompt_id": i} for i in range(n)]
    )
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    ranked, rankings = viz.rank_features(VizConfig(top_snippets=2), stats, sides, cast(Any, corpus), tokenizer)
    first = {r["feature"]: r["contrasts"]["first"] for r in ranked}
    assert [r["feature"] for r in ranked] == [0, 4, 1, 2, 3]
    assert first[2] is None and first[3] is None and first[1]["score"] is None
    assert rankings["first"] == [0, 4] and set(rankings["p_vs_s"]) == {0, 4, 1}
    assert [(s["prompt_id"], s["activation"]) for s in ranked[1]["snippets"]] == [(1, 3.0), (0, 2.0)] and ranked[3][
        "snippets"
    ] == []


def test_a_failed_run_keeps_the_earlier_dashboards(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/viz.md: "The folder is replaced only when a viz run completes."
    A failure while the tables are written (injected: it stands in for a full disk) leaves the earlier dashboards
    as they were and no staging folder."""
    from container_src import dashboards

    out = tree / "model" / "dashboards"
    out.mkdir(parents=True)
    (out / "index.html").write_text("the earlier run's")

    def fail(*_: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(dashboards, "write_index", fail)
    cfg = VizConfig(**SMALL, n_features=0)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        viz.viz_sae(cfg, ContainerPaths(tree), None, out)
    assert sorted(p.name for p in (tree / "model").iterdir()) == ["dashboards"]
    assert [p.name for p in out.iterdir()] == ["index.html"] and (out / "index.html").read_text() == "the earlier run's"


@pytest.mark.parametrize(
    ("key", "value"), [("model_name", "roneneldan/TinyStories-1M"), ("model_weights", "someone/else")]
)
def test_model_keys_given_override_the_saes_metadata(tree: Path, key: str, value: str) -> None:
    """docs/configuration.md: "Model to load; the one named in the SAE's metadata when empty."
    A name given is the one looked for in channel model (which holds only TinyStories-33M here), not the SAE's."""
    with pytest.raises(ConfigError, match=f"channel model: no entry for model_name='{value}'"):
        viz.check_inputs(VizConfig(**{key: value}), ContainerPaths(tree), tree / "scratch")  # type: ignore[arg-type]


def test_response_vs_question_runs_when_some_prompts_record_a_response(tree: Path) -> None:
    """docs/viz.md: "`response_vs_question`, and `response_vs_question[C]` per category"
    Prompts without a response (a question alone) beside ones with both: the contrast is still planned."""
    from datasets import load_from_disk

    channel = tree / "input" / "data" / "prompts"
    prompts = load_from_disk(str(SAMPLE_PROMPTS))
    # in memory: no cache file beside the shipped sample
    alone = prompts.map(
        lambda row, i: {"response": "" if i % 2 else row["response"]}, with_indices=True, keep_in_memory=True
    )
    shutil.rmtree(channel)
    alone.save_to_disk(str(channel))
    inputs = viz.check_inputs(VizConfig(), ContainerPaths(tree), tree / "scratch")
    assert -1 in inputs.prompts["response_start"] and "response_vs_question" in [c.name for c in inputs.contrasts]
