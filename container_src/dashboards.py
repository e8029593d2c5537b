"""Self-contained HTML: sae-dashboard's feature-centric dashboard, and an index of the ranked features.

sae-dashboard 0.8 loads d3 and plotly from CDNs, so offline its pages render blank. Both libraries are inlined here:
d3 6.7.0 is vendored in ``assets/`` (npm's ``d3`` package, ``dist/d3.min.js``, licence beside it), and plotly.js
comes from the ``plotly`` wheel. All features share one dashboard file, so the 5 MB of libraries are there once;
``dashboard.html#123`` opens on feature 123, which is how the index links to each feature.
"""

from __future__ import annotations

import html
import json
import logging
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
D3_FILE = "d3.v6.7.0.min.js"
_REMOTE_SCRIPTS = {
    "https://d3js.org/d3.v6.min.js": "d3",
    "https://cdn.plot.ly/plotly-latest.min.js": "plotly",
}
INDEX_OTHERS = 500  # live features listed in the index besides the rendered ones; the tables hold them all
_START_KEY = re.compile(r"const START_KEY = (\"[^\"]*\");")


def _library(name: str) -> str:
    if name == "d3":
        return (ASSETS / D3_FILE).read_text()
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_text()


def make_self_contained(page: str, title: str) -> str:
    """Inline the CDN scripts, open on the feature named in the URL's #fragment, and give the page a head."""
    for url, name in _REMOTE_SCRIPTS.items():
        tag = f'<script src="{url}"></script>'
        if tag not in page:
            raise RuntimeError(f"sae-dashboard's page no longer loads {url} as expected; update {__name__}")
        page = page.replace(tag, f"<script>\n{_library(name)}\n</script>")
    if re.search(r"<script[^>]+src=", page):
        raise RuntimeError("the dashboard still loads a script from elsewhere")
    page, found = _START_KEY.subn(
        lambda m: f"const START_KEY = (location.hash.slice(1) in DASHBOARD_DATA) ? location.hash.slice(1) : {m[1]};",
        page,
    )
    if found != 1:
        raise RuntimeError(f"sae-dashboard's page has no START_KEY to patch; update {__name__}")
    head = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head><body>\n'
    return head + page + "\n</body></html>\n"


def render_dashboard(
    sae: SAE,
    lm: HookedTransformer,
    tokens: torch.Tensor,
    features: list[int],
    *,
    device: str,
    ignore_tokens: set[int],
    out_file: Path,
    title: str,
) -> None:
    """sae-dashboard's feature-centric view of ``features`` over ``tokens``. Folds the SAE's decoder norms into
    its encoder (sae-dashboard does this in place), so call it after anything that needs the SAE as trained."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    vis_cfg = SaeVisConfig(
        hook_point=sae.cfg.metadata.hook_name,
        features=features,
        minibatch_size_features=64,
        minibatch_size_tokens=64,
        device=device,
        ignore_tokens=ignore_tokens,
    )
    with warnings.catch_warnings():  # its indexing helpers warn on every feature batch; nothing a user can act on
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(sae_dashboard|eindex)")
        vis_data = SaeVisRunner(vis_cfg).run(encoder=sae, model=lm, tokens=tokens)  # type: ignore[arg-type]
    raw = out_file.with_suffix(".raw.html")
    save_feature_centric_vis(sae_vis_data=vis_data, filename=raw)
    out_file.write_text(make_self_contained(raw.read_text(), title), encoding="utf-8")
    raw.unlink()


_INDEX_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; } th.nosort { cursor: auto; }
td.snip { text-align: left; max-width: 40em; }
td.snip b { background: #ffd75e; } .muted { color: #888; } code { background: #f4f4f4; padding: 0 3px; }
"""

_INDEX_SCRIPT = """
document.getElementById('contrast').addEventListener('change', (e) => {
  document.querySelectorAll('section.contrast').forEach((s) => { s.hidden = s.dataset.name !== e.target.value; });
});
document.querySelectorAll('th:not(.nosort)').forEach((th) => th.addEventListener('click', () => {
  const col = th.cellIndex;
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const num = (r) => parseFloat(r.cells[col].dataset.v ?? r.cells[col].textContent);
  const dir = th.dataset.dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
  rows.sort((a, b) => (dir === 'desc' ? num(b) - num(a) : num(a) - num(b)) || 0);
  rows.forEach((r) => body.appendChild(r));
}));
"""


def _snippet_html(snippet: dict[str, Any]) -> str:
    text = f"{html.escape(snippet['before'])}<b>{html.escape(snippet['token'])}</b>{html.escape(snippet['after'])}"
    return f'{text} <span class="muted">({html.escape(str(snippet["category"]))}, {snippet["activation"]:.2f})</span>'


def _cell(value: float, shown: str) -> str:
    """A table cell that sorts on ``value`` exactly, whatever it shows."""
    return f'<td data-v="{value!r}">{shown}</td>'


def _score_cell(score: float | None) -> str:
    """A score's table cell; no score sorts below every score."""
    return '<td data-v="-Infinity">&ndash;</td>' if score is None else _cell(score, f"{score:.3f}")


def _number_cell(value: float) -> str:
    """Three significant figures shown (a rare feature's rate is not rounded to 0)."""
    return _cell(value, f"{value:.3g}")


CONTRAST_FIELDS = (
    "rank",
    "score",
    "prompts_fired_a",
    "prompts_a",
    "prompts_fired_b",
    "prompts_b",
    "tokens_fired_a",
    "tokens_fired_b",
    "token_score",
    "mean_act_a",
    "mean_act_b",
)
ABLATION_FIELDS = ("tokens", "mean_delta_loss", "prompts", "prompt_mean_delta_loss", "prompts_loss_up", "fires_tokens")


def contrast_columns(figures: dict[str, Any] | None) -> dict[str, Any]:
    """One contrast's figures for a feature as flat CSV columns; empty where it never fired there or was not
    ablated."""
    figures = figures or {}
    out = {k: figures.get(k, "") for k in CONTRAST_FIELDS}
    ablation = figures.get("ablation") or {}
    for side in ("a", "b"):
        for k in ABLATION_FIELDS:
            out[f"ablation_{k}_{side}"] = ablation.get(side, {}).get(k, "")
    dropped = ablation.get("top_dropped", [])
    out["ablation_top_dropped"] = " | ".join(f"{d['token']!r} {d['mean_delta_logprob']}" for d in dropped)
    return out


def _ablation_cells(ablation: dict[str, Any] | None) -> list[str]:
    """Pooled loss change per side (nats per token), prompts whose loss rose, and the next tokens hurt most."""
    if not ablation:
        return ['<td data-v="-Infinity" class="muted">not ablated</td>', '<td data-v="-Infinity"></td>', "<td></td>"]
    cells = []
    for side in ("a", "b"):
        d = ablation[side]
        value = d["mean_delta_loss"]
        shown = f"{value:+.3g} ({d['prompts_loss_up']:,} / {d['prompts']:,} up)" if value is not None else ""
        cells.append('<td data-v="-Infinity">&ndash;</td>' if value is None else _cell(value, shown))
    dropped = ", ".join(html.escape(repr(t["token"])) for t in ablation["top_dropped"][:5])
    return [*cells, f'<td class="snip">{dropped}</td>']


def _contrast_rows(
    rows_by_id: dict[int, dict[str, Any]], name: str, ranking: list[int], rendered: set[int]
) -> list[str]:
    """The table rows of one contrast: its rendered features and its best others, in its rank order."""
    shown = [f for f in ranking if f in rendered] + [f for f in ranking if f not in rendered][:INDEX_OTHERS]
    rank_of = {f: i for i, f in enumerate(ranking)}
    body = []
    for f in sorted(shown, key=rank_of.__getitem__):
        row, c = rows_by_id[f], rows_by_id[f]["contrasts"][name]
        link = f'<a href="dashboard.html#{f}">{f}</a>' if f in rendered else f'<span class="muted">{f}</span>'
        share_a = c["prompts_fired_a"] / max(c["prompts_a"], 1)
        share_b = c["prompts_fired_b"] / max(c["prompts_b"], 1)
        cells = [
            _cell(c["rank"], str(c["rank"])),
            _cell(f, link),
            _score_cell(c["score"]),
            _cell(c["prompts_fired_a"], f"{c['prompts_fired_a']:,} / {c['prompts_a']:,}"),
            _cell(c["prompts_fired_b"], f"{c['prompts_fired_b']:,} / {c['prompts_b']:,}"),
            _number_cell(share_a),
            _number_cell(share_b),
            *[_cell(c[k], f"{c[k]:,}") for k in ("tokens_fired_a", "tokens_fired_b")],
            _score_cell(c["token_score"]),
            *_ablation_cells(c.get("ablation")),
        ]
        snippet = _snippet_html(row["snippets"][0]) if row.get("snippets") else ""
        body.append(f'<tr>{"".join(cells)}<td class="snip">{snippet}</td></tr>')
    return body


_CONTRAST_HEAD = [
    "rank",
    "feature",
    "score (prompts)",
    "prompts A",
    "prompts B",
    "share of prompts A",
    "share of prompts B",
    "tokens A",
    "tokens B",
    "score (tokens)",
    "Δloss A",
    "Δloss B",
]


def _contrast_section(entry: dict[str, Any], body: list[str], first: bool, prompt_set: str) -> str:
    a, b = entry["a"], entry["b"]

    def side(s: dict[str, Any]) -> str:
        where = "" if s["unit"] != "prompts" else f" ({prompt_set} prompts)"
        return (
            f"<code>{html.escape(s['selection'])}</code>: {s['prompts']:,} {s['unit']}{where}, {s['tokens']:,} tokens"
        )

    head = "".join(f"<th>{html.escape(h)}</th>" for h in _CONTRAST_HEAD) + '<th class="nosort">next tokens hurt</th>'
    return f"""<section class="contrast" data-name="{html.escape(entry["name"])}"{"" if first else " hidden"}>
<h2>{html.escape(entry["name"])}</h2>
<p>A = {side(a)}; B = {side(b)}.</p>
<table><thead><tr>{head}<th class="nosort">top prompt snippet</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></section>"""


def write_index(
    rows: list[dict[str, Any]],
    rankings: dict[str, list[int]],
    rendered: set[int],
    summary: dict[str, Any],
    out_file: Path,
) -> None:
    """One sortable table per contrast, chosen with a drop-down, linking to the dashboard of each rendered feature."""
    rows_by_id = {r["feature"]: r for r in rows}
    chosen = summary["prompt_set"]
    ran = [e for e in summary["contrasts"] if not e["skipped"]]
    sections = [
        _contrast_section(
            e, _contrast_rows(rows_by_id, e["name"], rankings[e["name"]], rendered), i == 0, chosen["used"]
        )
        for i, e in enumerate(ran)
    ]
    options = "".join(f'<option value="{html.escape(e["name"])}">{html.escape(e["name"])}</option>' for e in ran)
    skipped = "".join(
        f"<li><code>{html.escape(e['name'])}</code>: {html.escape(e['skipped'])}</li>"
        for e in summary["contrasts"]
        if e["skipped"]
    )
    links = ", ".join(f'<a href="dashboard.html#{f}">{f}</a>' for f in summary["rendered"])
    tokens = summary["tokens"]
    note = f" ({html.escape(chosen['note'])})" if chosen["note"] else ""
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SAE features by contrast</title><style>{_INDEX_STYLE}</style></head>
<body>
<h1>SAE features by contrast</h1>
<p>SAE <code>{html.escape(summary["sae"]["hook_name"])}</code> on
<code>{html.escape(summary["sae"]["model_name"])}</code>, d_sae {summary["sae"]["d_sae"]:,}.
Prompt set: <b id="prompt-set">{html.escape(chosen["used"])}</b>,
{chosen["prompts"]:,} of {chosen["of"]:,} prompts{note};
{tokens["prompts_used"]:,} of them read ({tokens["prompts"]:,} tokens), each in its own sequence;
Control text {tokens["stories"]:,} tokens. Dead (never fired on these tokens): {summary["dead_features"]:,} features.
Dashboards for {len(rendered)} features: {links or "none"}. Full tables: <a href="features.csv">features.csv</a>,
<a href="features.json">features.json</a>.</p>
<p>Contrast: <select id="contrast">{options}</select></p>
{"<p>Skipped contrasts:</p><ul>" + skipped + "</ul>" if skipped else ""}
<p class="muted">score (prompts) = ln of the one-sided 95% lower bound on how many times larger the share of side
A's prompts the feature fires on is than side B's (&gt; 0: more of A's prompts, with 95% confidence); the ranking.
prompts A / B = on how many prompts (story documents for the stories) it fires, of how many; tokens A / B = on how
many tokens; score (tokens) = the same bound on token firing rates, which counts a reply repeated on many tokens as
much evidence. &ndash; where it never fired on side A. &Delta;loss A / B = the change in next-token loss (nats per
token of the side, the feature removed minus the clean model, the SAE's reconstruction error kept) when the feature
is set to zero, with how many of the side's prompts (story rows for the stories) lost ground; next tokens hurt = the
tokens whose log-probability fell most. Only the top features of each contrast are ablated. Click a column to
sort.</p>
{chr(10).join(sections)}
<script>{_INDEX_SCRIPT}</script>
</body></html>
"""
    out_file.write_text(page, encoding="utf-8")


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """features.json (all fields) and features.csv (categories, contrasts and snippets flattened)."""
    import csv

    (out_dir / "features.json").write_text(json.dumps(rows) + "\n")
    categories = list(rows[0]["categories"]) if rows else []
    names = list(rows[0]["contrasts"]) if rows else []
    scalar = [k for k in rows[0] if k not in ("categories", "snippets", "contrasts")] if rows else []
    per_category = ("freq", "mean_act", "score")
    columns = [*scalar, *[f"{m}:{c}" for c in categories for m in per_category]]
    flat_names = list(contrast_columns(None))
    columns += [f"{n}:{k}" for n in names for k in flat_names] + ["snippets"]
    with (out_dir / "features.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            flat = [r[k] for k in scalar]
            flat += [r["categories"][c][m] for c in categories for m in per_category]
            for n in names:
                flat += list(contrast_columns(r["contrasts"][n]).values())
            snippets = r.get("snippets", [])
            flat.append(
                " | ".join(f"{s['prompt_id']} ({s['category']}, {s['activation']}): {s['text']}" for s in snippets)
            )
            writer.writerow(flat)


def dashboard_features(rankings: dict[str, list[int]], n: int) -> list[int]:
    """Up to ``n`` features, taking each contrast's best in turn (its first, then its second, …), so every
    contrast that ran has its top features rendered."""
    chosen: dict[int, None] = {}
    depth = 0
    while len(chosen) < n and any(depth < len(r) for r in rankings.values()):
        for ranking in rankings.values():
            if depth < len(ranking) and len(chosen) < n:
                chosen.setdefault(ranking[depth])
        depth += 1
    return list(chosen)
