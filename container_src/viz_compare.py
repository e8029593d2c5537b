"""`viz` on a multi-SAE job's output (``saes.json`` beside one folder per SAE): each SAE's dashboards in
``dashboards/<name>/``, and one table that ranks the SAEs side by side (``dashboards/comparison.json``, ``.html``).

The table's training figures (explained variance, L0, dead fraction, CE loss score) are each SAE's metrics.json, on
the held-out evaluation stream of `train`; the feature counts are viz's, on the prompts and stories it read.
"""

from __future__ import annotations

import html
import json
import logging
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from container_src import records
from container_src.config import ConfigError

logger = logging.getLogger(__name__)

MULTI = "saes.json"
METRICS = ("explained_variance", "l0", "dead_feature_fraction", "ce_loss_score")
PASSING = (
    "features whose prompt-level score is above 0: they fire on a larger share of side A's prompts than of side B's, "
    "with 95% confidence (docs/viz.md)"
)


def multi_root(source: Path, scratch: Path) -> Path | None:
    """The folder holding a multi-SAE job's SAEs: ``source`` itself, or its one model.tar.gz unpacked into
    ``scratch``; None when ``source`` holds a single SAE."""
    if (source / MULTI).is_file():
        return source
    archives = sorted(source.glob("*.tar.gz"))
    if (source / "cfg.json").is_file() or len(archives) != 1:
        return None
    try:
        with tarfile.open(archives[0]) as tar:
            if MULTI not in {m.name.removeprefix("./") for m in tar.getmembers()}:
                return None
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"channel sae: {archives[0]} is not a readable tar.gz ({exc})") from None
    return scratch


def member_names(root: Path) -> list[str]:
    """The SAEs that saes.json lists, each checked to have its folder."""
    try:
        names = [m["name"] for m in json.loads((root / MULTI).read_text())["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{root / MULTI} is not a multi-SAE job's list ({exc})") from None
    if missing := [n for n in names if not (root / n / "cfg.json").is_file()]:
        raise ConfigError(f"{root / MULTI} lists {', '.join(missing)}, whose folders hold no SAE (no cfg.json)")
    return names


def passing(features: list[dict[str, Any]]) -> dict[str, int]:
    """Per contrast that ran, how many features score above 0 (per prompt)."""
    names = list(features[0]["contrasts"]) if features else []
    return {
        name: sum(1 for r in features if (c := r["contrasts"].get(name)) and (c["score"] or 0) > 0) for name in names
    }


def row(name: str, sae_dir: Path, dashboards: Path) -> dict[str, Any]:
    """One SAE's line of the table: its training figures and its passing features per contrast."""
    metrics_file = sae_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    features = json.loads((dashboards / "features.json").read_text())
    summary = json.loads((dashboards / "summary.json").read_text())
    return {
        "name": name,
        "hook_name": summary["sae"]["hook_name"],
        "d_sae": summary["sae"]["d_sae"],
        **{key: metrics.get(key) for key in METRICS},
        "features_passing": passing(features),
        "skipped_contrasts": {c["name"]: c["skipped"] for c in summary["contrasts"] if c.get("skipped")},
    }


def compare(root: Path, out: Path, run_one: Callable[[Path, Path], dict[str, Any]]) -> dict[str, Any]:
    """Run viz (``run_one(sae_dir, out_dir)``) on each SAE of ``root``, then write the comparison beside their
    dashboards in ``out``; returns the comparison."""
    rows = []
    for name in member_names(root):
        logger.info("viz on SAE %s", name)
        run_one(root / name, out / name)
        rows.append(row(name, root / name, out / name))
    rows.sort(key=lambda r: -(r["explained_variance"] if r["explained_variance"] is not None else -1e9))
    comparison = {
        "saes": rows,
        "ranked_by": "explained_variance on train's held-out evaluation stream, highest first",
        "figures": {
            "explained_variance, l0, dead_feature_fraction, ce_loss_score": "each SAE's metrics.json (train's "
            "final evaluation: held-out stories mixed with the training prompts, tokens)",
            "features_passing": PASSING + "; counted on the prompts and stories viz read (see each summary.json)",
        },
    }
    records.write_json(out / "comparison.json", comparison)
    records.write_text(out / "comparison.html", comparison_html(comparison))
    return comparison


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def comparison_html(comparison: dict[str, Any]) -> str:
    """A self-contained page: one row per SAE, linking to its dashboards."""
    rows = comparison["saes"]
    contrasts = list(dict.fromkeys(c for r in rows for c in r["features_passing"]))
    head = ["SAE", "hook", "d_sae", *METRICS, *(f"passing: {c}" for c in contrasts)]
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        name = html.escape(r["name"])
        cells = [f'<a href="{name}/index.html">{name}</a>', _cell(r["hook_name"]), _cell(r["d_sae"])]
        cells += [_cell(r[key]) for key in METRICS]
        cells += [_cell(r["features_passing"].get(c)) for c in contrasts]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in comparison["figures"].items())
    return (
        "<!doctype html><meta charset='utf-8'><title>SAEs compared</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style>"
        f"<h1>SAEs compared</h1><p>Ranked by {html.escape(comparison['ranked_by'])}.</p>"
        f"<table>{''.join(lines)}</table><ul>{notes}</ul>\n"
    )
