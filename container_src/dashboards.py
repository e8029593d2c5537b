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


def write_index(rows: list[dict[str, Any]], rendered: set[int], summary: dict[str, Any], out_file: Path) -> None:
    """A sortable table of the ranked features (dead ones left out), linking to the dashboard of each rendered one."""
    categories = list(summary["tokens"]["categories"])
    others = [r for r in rows if not r["dead"] and r["feature"] not in rendered][:INDEX_OTHERS]
    rank_of = {r["feature"]: i for i, r in enumerate(rows, start=1)}
    shown = sorted([r for r in rows if r["feature"] in rendered] + others, key=lambda r: rank_of[r["feature"]])
    head = ["rank", "feature", "score", "fires prompts", "fires stories", "freq prompts", "freq stories"]
    head += ["mean act prompts", "mean act stories", *[f"score: {c}" for c in categories]]
    body = []
    for r in shown:
        f = r["feature"]
        link = f'<a href="dashboard.html#{f}">{f}</a>' if f in rendered else f'<span class="muted">{f}</span>'
        cells = [
            _cell(rank_of[f], str(rank_of[f])),
            _cell(f, link),
            _score_cell(r["score"]),
            *[_cell(r[k], f"{r[k]:,}") for k in ("fires_prompts", "fires_stories")],
            *[_number_cell(r[k]) for k in ("freq_prompts", "freq_stories", "mean_act_prompts", "mean_act_stories")],
            *[_score_cell(r["categories"][c]["score"]) for c in categories],
        ]
        snippet = _snippet_html(r["snippets"][0]) if r.get("snippets") else ""
        body.append(f'<tr>{"".join(cells)}<td class="snip">{snippet}</td></tr>')
    tokens = summary["tokens"]
    used = tokens["prompts_by_category"]
    per_cat = ", ".join(
        f"{html.escape(c)} {n:,} from {used[c]['used']:,} of {used[c]['of']:,} prompts"
        for c, n in tokens["categories"].items()
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Prompt-specific SAE features</title><style>{_INDEX_STYLE}</style></head>
<body>
<h1>Prompt-specific SAE features</h1>
<p>SAE <code>{html.escape(summary["sae"]["hook_name"])}</code> on
<code>{html.escape(summary["sae"]["model_name"])}</code>, d_sae {summary["sae"]["d_sae"]:,}.
Tokens: prompts {tokens["prompts"]:,} ({per_cat}), TinyStories {tokens["stories"]:,}.
Dead (never fired on these tokens): {summary["dead_features"]:,} features. Dashboards for {len(rendered)} features;
{len(others)} more live features, the highest ranked without one, are listed without a link.
Full table: <a href="features.csv">features.csv</a>,
<a href="features.json">features.json</a>.</p>
<p class="muted">score = ln of the one-sided 95% lower bound on how many times more often the feature fires on a
prompt token than on a TinyStories token (&gt; 0: more often on the prompts, with 95% confidence); per category the
same against the stories; &ndash; where it never fired on those prompts. Click a column to sort.</p>
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}<th class="nosort">top prompt snippet</th>
</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_INDEX_SCRIPT}</script>
</body></html>
"""
    out_file.write_text(page, encoding="utf-8")


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """features.json (all fields) and features.csv (categories and snippets flattened), most specific first."""
    import csv

    (out_dir / "features.json").write_text(json.dumps(rows, indent=1) + "\n")
    categories = list(rows[0]["categories"]) if rows else []
    scalar = [k for k in rows[0] if k not in ("categories", "snippets")] if rows else []
    per_category = ("freq", "mean_act", "score")
    columns = [*scalar, *[f"{m}:{c}" for c in categories for m in per_category], "snippets"]
    with (out_dir / "features.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            flat = [r[k] for k in scalar]
            flat += [r["categories"][c][m] for c in categories for m in per_category]
            snippets = r.get("snippets", [])
            flat.append(
                " | ".join(f"{s['prompt_id']} ({s['category']}, {s['activation']}): {s['text']}" for s in snippets)
            )
            writer.writerow(flat)
