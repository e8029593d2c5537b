"""The training graphs drawn from the metric log's records alone (what a run without W&B has)."""

from __future__ import annotations

from pathlib import Path

from container_src.plots import ALL_PLOTS, CURVES, plot_curves
from container_src.training_evals import HISTOGRAM_EDGES


def _records(evaluated: bool) -> list[dict]:
    records = []
    for step in range(10, 110, 10):
        record = {"step": step, "tokens": step * 256, "loss": 1 / step, "mse_loss": 0.9 / step, "aux_loss": 0.01}
        record |= {"explained_variance": 0.5, "l0": 8.0, "dead_features": 3.0, "lr": 1e-3}
        if evaluated and step % 20 == 0:
            counts = [0] * (len(HISTOGRAM_EDGES) - 1)
            counts[-8] = step  # the latents move as the run goes on; the graph is the last evaluation's
            record |= {"ce_loss_score": step / 100, "mean_log10_feature_sparsity": -2.0}
            record["feature_sparsity_histogram"] = {"log10_edges": HISTOGRAM_EDGES.tolist(), "latents": counts}
            record["sparsity_window_tokens"] = 1024
        records.append(record)
    return records


def test_every_graph_is_drawn_from_the_log(tmp_path: Path) -> None:
    """docs/train.md: "`plots/` holds ten graphs drawn from `training_log.jsonl`, with or without W&B"."""
    written = plot_curves(_records(evaluated=True), tmp_path, title="run")
    assert sorted(p.stem for p in written) == sorted(ALL_PLOTS) and len(written) == 10
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_a_log_without_evaluations_draws_the_step_curves_only(tmp_path: Path) -> None:
    """docs/train.md: "sparsity histograms in `training_log.jsonl` and `plots/`) run for a single run only";
    a log without evaluations draws the step curves only."""
    written = plot_curves(_records(evaluated=False), tmp_path)
    assert sorted(p.stem for p in written) == sorted(CURVES)
    assert not (tmp_path / "feature_sparsity_histogram.png").exists()
