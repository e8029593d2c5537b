"""viz: packing, the ranking, self-contained HTML, a planted feature found end to end, and bad inputs."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import container_src.model
from container_src.__main__ import main
from container_src.dashboards import make_self_contained
from container_src.data import pack_documents
from container_src.prompts import HELDOUT_FILE
from container_src.ranking import FeatureStats, rank, score
from tests.conftest import TINY_RUN, run_container, write_hyperparameters

PLANT = " QQQ"  # byte tokens the generated stories never contain
VIZ_SMALL = ("--device", "cpu", "--prompt_tokens", "3000", "--story_tokens", "3000", "--n_features", "6")


class _Tokenizer:
    """Whitespace 'tokenizer' with ids = word lengths: enough to check the packing arithmetic."""

    bos_token_id = 0
    eos_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def test_pack_documents_like_training() -> None:
    """docs/viz.md: "TinyStories (`story_tokens`) is packed as in training" """
    tokens, docs = pack_documents(_Tokenizer(), ["a bb ccc", "dddd", "ee f"], context_size=4, max_tokens=5)
    # each row opens with BOS; documents sharing a row are separated by BOS; cut after 5 document tokens
    assert tokens.tolist() == [[0, 1, 2, 3], [0, 4, 0, 2]]
    assert docs.tolist() == [[-1, 0, 0, 0], [-1, 1, -1, 2]]
    tokens, docs = pack_documents(_Tokenizer(), ["a bb", "ccc"], context_size=4, max_tokens=100)
    assert tokens.tolist() == [[0, 1, 2, 0], [0, 3, 0, 0]]  # the last row is padded with BOS
    assert docs.tolist() == [[-1, 0, 0, -1], [-1, 1, -1, -1]]


def test_pack_documents_packs_as_sae_lens_does() -> None:
    """docs/train.md: "BOS opens every packed row and separates the documents in it"
    viz packs its documents itself (it needs each token's document): the rows must be the ones SAE-Lens's own
    packing gives training (BOS opening each row and between documents), with the documents' tokens in order."""
    import random

    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rng = random.Random(5)
    texts = [" ".join("x" * rng.randint(1, 9) for _ in range(rng.randint(1, 40))) for _ in range(60)]
    tokens, docs = pack_documents(_Tokenizer(), texts, context_size=16, max_tokens=10**6, batch=7)
    ids = _Tokenizer()(texts)["input_ids"]
    sae_lens_rows = list(
        concat_and_batch_sequences(
            iter(torch.tensor(i) for i in ids), 16, begin_batch_token_id=0, sequence_separator_token_id=0
        )
    )
    assert len(sae_lens_rows) == len(tokens) - 1  # SAE-Lens drops the last, partial row; viz pads it
    assert torch.equal(torch.stack(sae_lens_rows), tokens[:-1])
    assert torch.equal(docs == -1, tokens == 0)  # BOS (and the padding) belong to no document
    for index, doc_ids in enumerate(ids):  # each document's tokens, in order, under its own index
        assert tokens[docs == index].tolist() == doc_ids


def test_ranking_prefers_prompt_specific_and_reliable_features() -> None:
    # features: 0 fires on 40% of prompt tokens and 1% of stories; 1 fires on 30% of both; 2 never fires;
    # 3 fires on 20 prompt tokens and no story token: a higher firing-rate ratio than 0's, on far less evidence.
    """docs/viz.md: "`token_score`, the same bound on token firing rates" """
    n_p, n_s = 1000, 4000
    acts = torch.zeros(n_p + n_s, 4)
    acts[: int(0.4 * n_p), 0] = 1.0
    acts[n_p : n_p + int(0.01 * n_s), 0] = 0.5
    acts[: int(0.3 * n_p), 1] = 2.0
    acts[n_p : n_p + int(0.3 * n_s), 1] = 2.0
    acts[10:30, 3] = 3.0
    group = torch.cat([torch.full((n_p // 2,), 1), torch.full((n_p // 2,), 2), torch.zeros(n_s, dtype=torch.long)])
    stats = FeatureStats(4, ["control", "official narrative", "refusal"], top_k=2, device="cpu")
    stats.add(acts[:n_p], group[:n_p], torch.arange(n_p))
    stats.add(acts[n_p:], group[n_p:])
    rows = rank(stats)
    assert [r["feature"] for r in rows] == [0, 3, 1, 2]
    assert rows[-1]["dead"] and rows[-1]["score"] is None and not any(r["dead"] for r in rows[:-1])
    by_id = {r["feature"]: r for r in rows}
    assert by_id[0]["freq_prompts"] == pytest.approx(0.4) and by_id[0]["freq_stories"] == pytest.approx(0.01)
    assert by_id[1]["score"] < 0 < by_id[3]["score"] < by_id[0]["score"]
    # a lower bound: below the observed ratio (40 for feature 0)
    assert by_id[0]["score"] < math.log(40)
    # feature 0's prompt tokens are all in the first half: category official narrative, none in refusal
    assert by_id[0]["categories"]["official narrative"]["freq"] == pytest.approx(0.8)
    assert by_id[0]["categories"]["refusal"]["freq"] == 0 and by_id[0]["categories"]["refusal"]["score"] is None
    assert by_id[0]["mean_act_stories"] == pytest.approx(0.005)
    assert set(stats.top_positions[:, 3].tolist()) <= set(range(10, 30))


def test_ranking_is_not_biased_by_unequal_token_counts() -> None:
    # 200k story tokens, a category of 98k prompt tokens and one of 2k. Feature 0 fires on 50 tokens of the large
    # category only; feature 1 never fires; feature 2 fires on 1% of every source.
    """docs/viz.md: "would give a feature that never fires on a small side a spurious score" """
    stats = FeatureStats(3, ["control", "big", "small"], top_k=1, device="cpu")
    for group, n in ((0, 200_000), (1, 98_000), (2, 2_000)):
        acts = torch.zeros(n, 3)
        acts[: n // 100, 2] = 1.0
        if group == 1:
            acts[:50, 0] = 1.0
        stats.add(acts, torch.full((n,), group), torch.arange(n) if group else None)
    by_id = {r["feature"]: r for r in rank(stats)}
    # No fires on a side is no evidence for it, however small the side (a pseudo-count of ½ per cell gave the
    # small category ln(200k / 2k) = 4.6 here, and a score above 0).
    assert by_id[0]["categories"]["small"]["score"] is None and by_id[0]["categories"]["big"]["score"] > 0
    assert by_id[1]["dead"] and by_id[1]["score"] is None
    for name in ("big", "small"):  # equal firing rates
        assert by_id[2]["categories"][name]["score"] < 0


@pytest.mark.parametrize(("n_prompts", "n_stories"), [(100_000, 5_000), (20, 200_000), (1_000, 1_000)])
def test_score_follows_the_evidence(n_prompts: int, n_stories: int) -> None:
    """docs/viz.md: "it stays comparable across contrasts whose sides differ in size"
    More fires on the prompts raise the score, more on the stories lower it, whichever side is smaller."""
    f_p = min(500, n_prompts)
    rising = score(np.array([f_p - 2, f_p - 1, f_p]), n_prompts, np.zeros(3), n_stories)
    falling = score(np.full(3, f_p), n_prompts, np.array([0, 1, 2]), n_stories)
    assert np.all(np.diff(rising) > 0) and np.all(np.diff(falling) < 0)


def test_score_is_a_95_percent_lower_bound() -> None:
    """docs/viz.md: "the natural log of a one-sided 95% lower bound on the ratio of the shares"
    With equal firing rates on both sides, at most 5% of features may score above 0 (Clopper–Pearson is
    conservative: fewer), at any balance of token counts."""
    rng = np.random.default_rng(0)
    for n_p, n_s, rate in ((5_000, 50_000, 0.01), (50_000, 5_000, 0.01), (2_000, 200_000, 0.002), (1_000, 1_000, 0.3)):
        scores = score(rng.binomial(n_p, rate, 20_000), n_p, rng.binomial(n_s, rate, 20_000), n_s)
        assert 0.005 < np.mean(np.nan_to_num(scores, nan=-1.0) > 0) <= 0.05
    # and when the prompts' rate is twice the stories', it says so, and stays below the true ratio 95% of the time
    scores = score(rng.binomial(50_000, 0.02, 1_000), 50_000, rng.binomial(50_000, 0.01, 1_000), 50_000)
    assert np.all(scores > 0) and np.mean(scores >= math.log(2)) <= 0.05


def test_snippet_keeps_whole_characters(tiny_assets: dict[str, Path]) -> None:
    """docs/viz.md: "the text around the strongest token: in the JSON as `before`, `token`, `after`"
    Byte-level BPE splits a Chinese character into several tokens; a snippet must never show half of one."""
    from transformers import AutoTokenizer

    from container_src.snippets import snippet

    tokenizer = AutoTokenizer.from_pretrained("roneneldan/TinyStories-33M")
    text = "The 中国 story"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    partial = [i for i, t in enumerate(ids) if "\ufffd" in tokenizer.decode([t])]
    assert partial, "expected the characters to be split into byte tokens"
    for pos in partial:
        shown = snippet(tokenizer, ids, [0] * len(ids), pos)
        assert "\ufffd" not in shown["text"]
        assert shown["token"].strip() in ("中", "国") and shown["before"].startswith("The")
        assert (shown["before"] + shown["token"] + shown["after"]) in text


def test_dashboard_page_is_made_self_contained() -> None:
    """docs/viz.md: "d3 and plotly are inlined: the page loads nothing from the network" """
    page = (
        "<div id='dropdown-container'></div>\n"
        '<script src="https://d3js.org/d3.v6.min.js"></script>\n'
        '<script src="https://cdn.plot.ly/plotly-latest.min.js"></script>\n'
        '<script>\nconst START_KEY = "7";\n</script>'
    )
    out = make_self_contained(page, "t")
    assert not re.search(r"<script[^>]*\ssrc=", out)  # nothing is loaded from elsewhere
    assert "d3js.org v6.7.0" in out and "plotly.js v" in out
    assert "location.hash.slice(1) in DASHBOARD_DATA" in out and '<meta charset="utf-8">' in out
    with pytest.raises(RuntimeError, match="no longer loads"):
        make_self_contained("<div></div>", "t")


# ---------------------------------------------------------------------------------------------------------------
# End to end, with a tiny SAE trained on prompts that carry a token the stories never have


def _planted_prompts(out: Path) -> None:
    from datasets import Dataset

    from container_src.synthetic import make_stories

    texts = [s.replace(". ", "." + PLANT + " ", 3) for s in make_stories(60, seed=7)]
    categories = ["official narrative", "refusal", None] * 20  # None: a prompt without one
    Dataset.from_dict({"id": [f"p{i}" for i in range(60)], "text": texts, "category": categories}).save_to_disk(
        str(out)
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict[str, Path]) -> Path:
    """A SageMaker tree whose model/ holds a tiny SAE trained with planted prompts (30% of documents)."""
    base = tmp_path_factory.mktemp("planted") / "opt_ml"
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    (channels / "model").symlink_to(tiny_assets["hf_home"], target_is_directory=True)
    (channels / "control").symlink_to(tiny_assets["stories"], target_is_directory=True)
    _planted_prompts(channels / "prompts")
    # trained on every prompt, so that viz reads all 60 whatever its prompt set
    hyperparameters = {**TINY_RUN, "prompt_ratio": "0.3", "training_tokens": "32768", "heldout_prompt_fraction": "0"}
    write_hyperparameters(base, hyperparameters)
    result = run_container(base, "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (base / "input" / "config" / "hyperparameters.json").unlink()
    return base


@pytest.mark.slow
def test_planted_token_features_rank_first(planted: Path, tmp_path: Path) -> None:
    # The SAE arrives as a train job's model.tar.gz in channel sae, in a tree of its own.
    """docs/viz.md: "the topic baseline (today's score): the vocabulary of the prompts" """
    base = tmp_path / "opt_ml"
    shutil.copytree(planted / "input", base / "input", symlinks=True)
    (base / "input" / "data" / "sae").mkdir()
    with tarfile.open(base / "input" / "data" / "sae" / "model.tar.gz", "w:gz") as tar:
        for entry in (planted / "model").iterdir():
            if entry.name != HELDOUT_FILE:  # an SAE from before train held prompts out
                tar.add(entry, arcname=entry.name)

    result = run_container(base, "viz", *VIZ_SMALL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = base / "model" / "dashboards"
    assert sorted(p.name for p in out.iterdir()) == [
        "dashboard.html",
        "features.csv",
        "features.json",
        "index.html",
        "summary.json",
    ]
    rows = json.loads((out / "features.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"]["prompts"] == 3000 and summary["tokens"]["stories"] == 3000
    assert set(summary["tokens"]["categories"]) == {"official narrative", "refusal", "(none)"}
    assert summary["sae"]["source"] == str(base / "input" / "data" / "sae")
    # an SAE without a held-out record is read on every prompt, and the run says so
    assert summary["prompt_set"]["used"] == "all" and summary["prompt_set"]["prompts"] == 60
    assert "prompt_set=heldout: the SAE has no heldout_prompts.json" in result.stdout

    # Independent check, computed here with the model and the SAE on the planted prompts themselves: where does each
    # feature fire, on the planted tokens or on the rest of the prompt?
    from datasets import load_from_disk
    from sae_lens import SAE

    lm = container_src.model.load_model("roneneldan/TinyStories-33M", "cpu")
    sae = SAE.load_from_disk(str(planted / "model"), device="cpu")
    planted_ids = set(lm.to_tokens(PLANT, prepend_bos=False)[0].tolist())
    planted_texts = {lm.tokenizer.decode([t]) for t in planted_ids}  # type: ignore[union-attr]
    on_plant, elsewhere = [], []
    for text in load_from_disk(str(planted / "input" / "data" / "prompts"))["text"]:
        tokens = lm.to_tokens(str(text))
        is_planted = torch.tensor([t in planted_ids for t in tokens[0].tolist()])
        with torch.no_grad():
            _, cache = lm.run_with_cache(tokens, names_filter=["blocks.2.mlp.hook_post"])
            feats = sae.encode(cache["blocks.2.mlp.hook_post"])[0] > 0
        on_plant.append(feats[is_planted])
        elsewhere.append(feats[~is_planted])
    fires_on_plant = torch.cat(on_plant).float().mean(0)
    fires_elsewhere = torch.cat(elsewhere).float().mean(0)

    # The SAE's training is not bit-for-bit repeatable across machines, and a tiny random model can also grow a
    # feature for some other word the prompts use more than the stories: the first feature, and two of the top three,
    # must be planted-token features.
    top = rows[:3]
    for row in top:
        assert row["freq_prompts"] > 2 * row["freq_stories"]

    def planted_feature(row: dict) -> bool:
        f = row["feature"]
        return bool(fires_on_plant[f] > fires_elsewhere[f]) and row["snippets"][0]["token"] in planted_texts

    assert planted_feature(top[0]), (top[0], fires_on_plant[top[0]["feature"]], fires_elsewhere[top[0]["feature"]])
    assert sum(map(planted_feature, top)) >= 2, [(r["feature"], r["snippets"][0]) for r in top]
    # Features that fire about as often on both sources rank below every one of the top features.
    even = [r for r in rows if r["freq_stories"] > 0.01 and 0.8 < r["freq_prompts"] / r["freq_stories"] < 1.25]
    assert even, "expected some features that fire equally on both sources"
    assert max(r["score"] for r in even) < min(r["score"] for r in top)
    # The tables agree with each other, and the dashboards cover the top features.
    with (out / "features.csv").open(newline="") as f:
        csv_ids = [int(record[0]) for record in list(csv.reader(f))[1:]]
    assert csv_ids == [r["feature"] for r in rows]
    # Dashboards: each contrast's best in turn, the first contrast (prompts vs stories) first.
    ran = [c for c in summary["contrasts"] if not c["skipped"]]
    assert ran[0]["name"] == "prompts_vs_stories" and len(ran) >= 2
    assert summary["rendered"][0] == rows[0]["feature"] == ran[0]["top"][0]
    assert {c["top"][0] for c in ran} <= set(summary["rendered"]) and len(summary["rendered"]) == 6


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is required in CI: apt-get install -y chromium")
    pytest.skip("no Chromium on this machine (apt-get install -y chromium)")


_ERROR_TRAP = (
    "<script>window.__errors=[];const __e=console.error;console.error=(...a)=>{__errors.push(a.join(' '));"
    "__e(...a)};window.addEventListener('error',e=>__errors.push(e.message));"
    "window.addEventListener('load',()=>setTimeout(()=>document.body.setAttribute('data-errors',"
    "JSON.stringify(__errors)),500));</script>"
)


def _render(page: Path, fragment: str = "", script: str = "") -> str:
    """The page's DOM after its scripts (and ``script``, at the end of the body) ran in headless Chromium with every
    network request refused."""
    trapped = page.with_name(f".trap-{page.name}")
    text = page.read_text().replace("<head>", "<head>" + _ERROR_TRAP, 1)
    trapped.write_text(text.replace("</body>", f"<script>{script}</script></body>", 1) if script else text)
    try:
        result = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--proxy-server=127.0.0.1:9",  # nothing listens there: any network access fails
                "--proxy-bypass-list=<-loopback>",
                "--virtual-time-budget=20000",
                "--dump-dom",
                trapped.as_uri() + fragment,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        trapped.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_dashboards_render_offline_in_chromium(planted: Path) -> None:
    """README: "open `data/smoke/model/dashboards/index.html` in a browser (it needs no network)" """
    result = run_container(planted, "viz", *VIZ_SMALL, "--features", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = planted / "model" / "dashboards"
    for page in out.glob("*.html"):
        assert 'src="http' not in page.read_text() and "src='http" not in page.read_text()
    rows = json.loads((out / "features.json").read_text())
    top = rows[0]["feature"]

    dashboard = _render(out / "dashboard.html", f"#{top}")
    assert 'data-errors="[]"' in dashboard, dashboard[-2000:]
    assert f'<option value="{top}" selected' in dashboard  # opened on the feature named in the link
    assert dashboard.count('class="token"') > 10 and "<svg" in dashboard  # sequences and plotly histograms

    index = _render(out / "index.html")
    assert 'data-errors="[]"' in index
    assert f'href="dashboard.html#{top}"' in index and index.count("<tr>") > 5

    # Clicking a column sorts by the exact numbers (the page shows them rounded), highest first; the rows come in
    # rank order before. The first contrast (prompts vs stories) is the one shown.
    def column(name: str) -> str:
        return f"Array.from(document.querySelectorAll('th')).findIndex((th) => th.textContent === '{name}')"

    read = "Array.from(document.querySelector('tbody').rows).map((r) => Number(r.cells[COL].dataset.v))"
    script = (
        "window.addEventListener('load', () => {"
        f"const rank = {column('rank')}, col = {column('tokens B')};"
        f"const before = {read.replace('COL', 'rank')};"
        "document.querySelectorAll('th')[col].click();"
        f"document.body.dataset.result = JSON.stringify([before, {read.replace('COL', 'col')}]);"
        "});"
    )
    sorted_page = _render(out / "index.html", script=script)
    found = re.search(r'data-result="([^"]*)"', sorted_page)
    assert found, sorted_page[-2000:]
    before, after = json.loads(html.unescape(found.group(1)))
    assert before == sorted(before) and len(before) > 5
    assert after == sorted(after, reverse=True) and after[0] > after[-1]
    first = [r["contrasts"]["prompts_vs_stories"] for r in rows if r["contrasts"]["prompts_vs_stories"]]
    assert sorted(after) == sorted(c["tokens_fired_b"] for c in first if c["score"] is not None)

    # Choosing another contrast in the drop-down shows its own ranking, and hides the first.
    visible = (
        "Array.from(document.querySelectorAll('section.contrast')).filter((s) => !s.hidden)"
        ".map((s) => [s.dataset.name, Array.from(s.querySelector('tbody').rows).slice(0, 5)"
        ".map((r) => Number(r.cells[1].dataset.v))])"
    )
    summary = json.loads((out / "summary.json").read_text())
    # the SAE held no prompt out (heldout_prompt_fraction=0): the held-out default reads every prompt, and says so
    assert summary["prompt_set"]["used"] == "all" and summary["prompt_set"]["prompts"] == 60
    assert "trained on every prompt (heldout_prompt_fraction=0)" in summary["prompt_set"]["note"]
    other = next(c for c in summary["contrasts"][1:] if not c["skipped"])
    script = (
        "window.addEventListener('load', () => {"
        f"const before = {visible}; const pick = document.getElementById('contrast');"
        f"pick.value = {json.dumps(other['name'])}; pick.dispatchEvent(new Event('change'));"
        f"document.body.dataset.result = JSON.stringify([before, {visible}]);"
        "});"
    )
    switched = re.search(r'data-result="([^"]*)"', _render(out / "index.html", script=script))
    assert switched
    before, after = json.loads(html.unescape(switched.group(1)))
    assert before == [["prompts_vs_stories", summary["contrasts"][0]["top"][:5]]]
    assert after == [[other["name"], other["top"][:5]]] and other["top"][:5] != summary["contrasts"][0]["top"][:5]


@pytest.mark.slow
def test_a_category_the_token_cap_leaves_out_is_kept_and_named(planted: Path, tmp_path: Path) -> None:
    """docs/viz.md: "a category it left out keeps its columns, with no scores, and a warning says so"
    With a prompt_tokens cap that takes one prompt, the other categories keep their columns (no scores) and a
    warning says why; a dead feature asked for by id is rendered with a warning."""
    base = _viz_tree(planted, tmp_path)
    small = ("--device", "cpu", "--prompt_tokens", "20", "--story_tokens", "3000", "--n_features", "2")
    small += ("--min_prompts", "1")
    result = run_container(base, "viz", *small)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = base / "model" / "dashboards"
    summary = json.loads((out / "summary.json").read_text())
    by_category = summary["tokens"]["prompts_by_category"]
    assert {c: u["of"] for c, u in by_category.items()} == {"(none)": 20, "official narrative": 20, "refusal": 20}
    assert sum(u["used"] for u in by_category.values()) == summary["tokens"]["prompts_used"] == 1
    left_out = [c for c, u in by_category.items() if u["used"] == 0]
    assert len(left_out) == 2 and all(summary["tokens"]["categories"][c] == 0 for c in left_out)
    for name in left_out:
        assert f"category {name!r}: none of its 20 prompts fit in prompt_tokens=20" in result.stdout
    rows = json.loads((out / "features.json").read_text())
    assert all(r["categories"][c]["score"] is None for r in rows for c in left_out)
    # every category contrast has a side without prompts: skipped, with the reason in the summary and the index
    skipped = {c["name"]: c["skipped"] for c in summary["contrasts"]}
    assert skipped["prompts_vs_stories"] is None and len(skipped) == 4
    for name in by_category:
        reason = skipped[f"category[{name}]_vs_others"]
        assert reason and "fewer than min_prompts=1" in reason
        assert f"contrast category[{name}]_vs_others skipped" in result.stdout
        assert html.escape(reason) in (out / "index.html").read_text()

    dead = next(r["feature"] for r in rows if r["dead"])
    result = run_container(base, "viz", *small, "--features", str(dead))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"features {dead} never fired on these tokens" in result.stdout
    assert f'href="dashboard.html#{dead}"' in (out / "index.html").read_text()


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: a clear message, status 2, nothing published


def _viz_tree(planted: Path, tmp_path: Path) -> Path:
    base = tmp_path / "opt_ml"
    shutil.copytree(planted / "input", base / "input", symlinks=True)
    shutil.copytree(planted / "model", base / "input" / "data" / "sae", ignore=shutil.ignore_patterns("dashboards"))
    return base


def _fails(base: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert main(["viz", *VIZ_SMALL, *args]) == 2
    assert not (base / "model" / "dashboards").exists()
    return (base / "output" / "failure").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_sae", "no SAE: channel sae"),
        ("bad_tar", "is not a readable tar.gz"),
        ("no_weights", "lacks sae_weights.safetensors"),
        ("corrupt_weights", "could not load the SAE"),
        ("bad_cfg", "is not an SAE-Lens config"),
        ("no_prompts", "no prompts channel"),
    ],
)
def test_bad_sae_or_channels_are_refused(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, expected: str
) -> None:
    """docs/viz.md: "channels and datasets are checked before anything heavy is loaded" """
    base = _viz_tree(planted, tmp_path)
    sae = base / "input" / "data" / "sae"
    if damage == "no_sae":
        shutil.rmtree(sae)
    elif damage == "bad_tar":
        shutil.rmtree(sae)
        sae.mkdir()
        (sae / "model.tar.gz").write_bytes(b"not a tar file at all")
    elif damage == "no_weights":
        (sae / "sae_weights.safetensors").unlink()
    elif damage == "corrupt_weights":
        weights = sae / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad_cfg":
        (sae / "cfg.json").write_text('{"d_in": 256}')
    elif damage == "no_prompts":
        shutil.rmtree(base / "input" / "data" / "prompts")
    assert expected in _fails(base, monkeypatch)


@pytest.mark.slow
def test_sae_hook_missing_from_model_is_named(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/viz.md: "checks the hook and the widths"; a hook the model lacks is named with the model's hooks."""
    base = _viz_tree(planted, tmp_path)
    cfg_file = base / "input" / "data" / "sae" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["metadata"]["hook_name"] = "blocks.7.mlp.hook_post"
    cfg_file.write_text(json.dumps(cfg))
    failure = _fails(base, monkeypatch)
    assert "blocks.7.mlp.hook_post" in failure and "blocks.3.mlp.hook_post" in failure


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--features", "3,100000"), ["features='3,100000': [100000] out of range", "this SAE has 1024"]),
        (
            ("--contrasts", "mine: topic=war vs stories"),
            [
                "'mine' filters on column 'topic', which the prompts lack",
                "category: (none), official narrative, refusal",
            ],
        ),
        (
            ("--contrasts", "mine: category=deflection part=response vs stories"),
            ["column 'category' has no value 'deflection'; values present: (none), official narrative, refusal"],
        ),
        (("--contrasts", "mine category=refusal vs stories"), ["has no name"]),
    ],
)
def test_bad_features_or_contrasts_fail_before_the_model_loads(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], expected: list[str]
) -> None:
    """docs/viz.md: "each refusal exits with status 2"; feature ids and contrasts are checked before the model loads."""
    base = _viz_tree(planted, tmp_path)
    loads: list[str] = []
    monkeypatch.setattr(container_src.model, "load_model", lambda *a, **k: loads.append(a[0]))
    failure = _fails(base, monkeypatch, *args)
    assert all(e in failure for e in expected), failure
    assert loads == []


@pytest.mark.slow
def test_heldout_prompts_user_contrasts_and_per_prompt_counts(planted: Path, tmp_path: Path) -> None:
    """docs/viz.md: "`prompt_set=heldout` (the default) reads those prompts only"
    With a held-out record beside the SAE, viz reads those prompts only; a user contrast runs, one with an empty
    side is skipped with its reason; the distinct-prompt counts match a recount with the model and the SAE."""
    base = _viz_tree(planted, tmp_path)
    held = [f"p{i}" for i in range(30)]
    (base / "input" / "data" / "sae" / "heldout_prompts.json").write_text(json.dumps({"heldout_ids": held}))
    contrasts = "mine: category=refusal vs stories; empty: part=response vs stories"
    args = ("--device", "cpu", "--story_tokens", "3000", "--n_features", "3", "--ablate_top", "3")
    args += ("--contrasts", contrasts)
    result = run_container(base, "viz", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = base / "model" / "dashboards"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt_set"] == {"asked": "heldout", "used": "heldout", "prompts": 30, "of": 60, "note": ""}
    assert summary["tokens"]["prompts_used"] == 30
    index = (out / "index.html").read_text()
    assert '<b id="prompt-set">heldout</b>,\n30 of 60 prompts' in index
    by_name = {c["name"]: c for c in summary["contrasts"]}
    assert by_name["empty"]["skipped"].startswith("side a (part=response) has 0 prompts with tokens")
    assert "contrast empty skipped" in result.stdout
    assert by_name["mine"]["skipped"] is None and by_name["mine"]["a"]["prompts"] == 10
    assert by_name["mine"]["a"]["selection"] == "category=refusal" and by_name["mine"]["b"]["unit"] == "story documents"
    rows = json.loads((out / "features.json").read_text())
    with (out / "features.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert {"mine:score", "mine:prompts_fired_a", "prompts_vs_stories:tokens_fired_b"} <= set(header)
    assert all(r["contrasts"]["mine"] is None or r["contrasts"]["mine"]["prompts_a"] == 10 for r in rows)

    # Recount, without viz's code: each held-out prompt alone (BOS, the prompt, cut at the context), through the
    # model and the SAE; on how many prompts, and on how many tokens, does the top feature fire?
    from datasets import load_from_disk
    from sae_lens import SAE

    top = by_name["prompts_vs_stories"]["top"][0]
    figures = next(r for r in rows if r["feature"] == top)["contrasts"]["prompts_vs_stories"]
    lm = container_src.model.load_model("roneneldan/TinyStories-33M", "cpu")
    sae = SAE.load_from_disk(str(planted / "model"), device="cpu")
    context = summary["tokens"]["context_size"]
    prompts, tokens = 0, 0
    channel = load_from_disk(str(planted / "input" / "data" / "prompts"))
    for prompt_id, text in zip(channel["id"], channel["text"], strict=True):
        if prompt_id not in held:
            continue
        ids = lm.to_tokens(str(text))[:, :context]
        with torch.no_grad():
            _, cache = lm.run_with_cache(ids, names_filter=["blocks.2.mlp.hook_post"])
            fires = sae.encode(cache["blocks.2.mlp.hook_post"])[0, 1:, top] > 0
        prompts += bool(fires.any())
        tokens += int(fires.sum())
    assert (figures["prompts_fired_a"], figures["tokens_fired_a"]) == (prompts, tokens)
    assert figures["prompts_a"] == 30 and figures["rank"] == 1

    # The ablation of that feature, recomputed with TransformerLens hooks: the SAE's output with the feature minus
    # its output without it, taken from the activations; the loss change pooled over the positions that predict a
    # held-out prompt's tokens.
    hook = "blocks.2.mlp.hook_post"

    def remove(x: torch.Tensor, hook: object = None) -> torch.Tensor:
        acts = sae.encode(x)
        kept = acts.clone()
        kept[..., top] = 0
        return x - (sae.decode(acts) - sae.decode(kept))

    total, count, up, per_prompt = 0.0, 0, 0, []
    for prompt_id, text in zip(channel["id"], channel["text"], strict=True):
        if prompt_id not in held:
            continue
        ids = lm.to_tokens(str(text))[:, :context]
        with torch.no_grad():
            clean = lm(ids, return_type="loss", loss_per_token=True)[0]
            ablated = lm.run_with_hooks(ids, fwd_hooks=[(hook, remove)], return_type="loss", loss_per_token=True)[0]
        delta = (ablated - clean).double()
        total, count = total + float(delta.sum()), count + delta.numel()
        per_prompt.append(float(delta.mean()))
        up += float(delta.mean()) > 0
    ablation = figures["ablation"]["a"]
    assert ablation["tokens"] == count == summary["tokens"]["prompts"]
    assert ablation["mean_delta_loss"] == pytest.approx(total / count, rel=1e-3, abs=1e-6)
    assert ablation["prompt_mean_delta_loss"] == pytest.approx(np.mean(per_prompt), rel=1e-3, abs=1e-6)
    assert ablation["prompts"] == 30 and ablation["prompts_loss_up"] == up
    assert figures["ablation"]["b"]["tokens"] > 0 and by_name["mine"]["skipped"] is None
    ablated = [r["feature"] for r in rows if r["contrasts"]["mine"] and r["contrasts"]["mine"].get("ablation")]
    assert sorted(ablated) == sorted(by_name["mine"]["top"][:3])


def test_docs_viz_score_is_ln_of_the_clopper_pearson_bound_to_the_digit() -> None:
    """docs/viz.md: "π_low = Beta(k_a, k_b + 1).ppf(0.05)"
    With score = ln(π_low / (1 − π_low)) + ln(n_b / n_a), and "a feature that never fired on A has no score". The
    formula, evaluated here on its own, to 1e-9."""
    from scipy.stats import beta

    for k_a, n_a, k_b, n_b in ((10, 1_000, 2, 10_000), (3, 50, 0, 7), (400, 2_000, 390, 2_000), (1, 1, 5, 100_000)):
        low = beta.ppf(0.05, k_a, k_b + 1)
        expected = math.log(low / (1 - low)) + math.log(n_b / n_a)
        assert float(score(np.array([k_a]), n_a, np.array([k_b]), n_b)[0]) == pytest.approx(expected, abs=1e-9)
    assert np.isnan(score(np.array([0]), 1_000, np.array([5]), 1_000)[0])


def test_docs_viz_features_columns_counts_and_order_for_a_hand_made_set() -> None:
    """docs/viz.md: "per category `freq`/`mean_act`/`score`"
    In features.json: `score`, `freq_prompts`, `freq_stories`, `fires_*`, `mean_act_*`, `max_act_*`, `dead`, per
    category `freq`/`mean_act`/`score`; every feature, most prompt-specific first, dead ones last; the
    strongest prompt activations' positions kept per feature."""
    # 4 prompt tokens (category a: 0-1, b: 2-3) and 4 story tokens; 5 features
    acts = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [3.0, 0.0, 0.5, 0.0, 0.0],
            [2.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 4.0],
        ]
    )
    stories = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0], [0.0] * 5, [0.5, 0.0, 0.0, 0.0, 0.0]])
    stats = FeatureStats(5, ["control", "a", "b"], top_k=2, device="cpu")
    stats.add(acts, torch.tensor([1, 1, 2, 2]), torch.tensor([10, 11, 12, 13]))
    stats.add(stories, torch.zeros(4, dtype=torch.long))
    rows = rank(stats)
    by_id = {r["feature"]: r for r in rows}
    # feature 4 and 2 fire once on the prompts, never on the stories: the same score, so by feature id
    assert [r["feature"] for r in rows] == [0, 2, 4, 1, 3]
    assert by_id[2]["score"] == by_id[4]["score"] == round(float(score(np.array([1]), 4, np.array([0]), 4)[0]), 4)
    assert by_id[1]["score"] is None and not by_id[1]["dead"]  # fired on the stories only
    assert by_id[3]["dead"] and by_id[3]["score"] is None
    f0 = by_id[0]
    assert (f0["fires_prompts"], f0["fires_stories"]) == (3, 1)
    assert (f0["freq_prompts"], f0["freq_stories"]) == (0.75, 0.25)
    assert (f0["mean_act_prompts"], f0["mean_act_stories"]) == (1.5, 0.125)
    assert (f0["max_act_prompts"], f0["max_act_stories"]) == (3.0, 0.5)
    assert f0["categories"]["a"] == {"freq": 1.0, "mean_act": 2.0, "score": f0["categories"]["a"]["score"]}
    assert f0["categories"]["b"]["freq"] == 0.5 and f0["categories"]["b"]["mean_act"] == 1.0
    assert f0["score"] == round(float(score(np.array([3]), 4, np.array([1]), 4)[0]), 4)
    assert f0["categories"]["a"]["score"] == round(float(score(np.array([2]), 2, np.array([1]), 4)[0]), 4)
    assert by_id[1]["max_act_stories"] == 2.0 and by_id[1]["mean_act_stories"] == 0.75
    # the strongest prompt activations of feature 0, strongest first, by position; of feature 4, its one fire first
    assert stats.top_positions[:, 0].tolist() == [11, 12] and stats.top_values[:, 0].tolist() == [3.0, 2.0]
    assert stats.top_positions[0, 4] == 13
    for sources in ([0], [1]):  # stories only, prompts only
        one_side = FeatureStats(2, ["control", "a"], top_k=1, device="cpu")
        one_side.add(torch.ones(3, 2), torch.tensor(sources * 3), torch.arange(3))
        with pytest.raises(ValueError, match="ranking needs tokens from both the prompts and the stories"):
            rank(one_side)
