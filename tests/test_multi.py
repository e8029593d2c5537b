"""`train` with `saes`: several SAEs on one forward pass of the tiny model, end to end, against single runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from container_src.__main__ import main
from container_src.sae_set import members
from tests import test_launcher
from tests.conftest import TINY_RUN, make_opt_ml, run_container, stop_train_at, write_hyperparameters

pytestmark = pytest.mark.slow

# Two SAEs of the smoke preset's width (d_sae = 4 × 256) and k 8 and 4, and one half as wide.
METRIC_LINE = re.compile(r"\[metric\] step=(\d+) tokens=(\d+) ")
SAES = '[{"name": "k8"}, {"name": "k4", "k": 4}, {"name": "narrow", "expansion_factor": 2}]'


def _train(base: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> int:
    write_hyperparameters(base, values)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    return main(["train"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict[str, Path]) -> dict[str, Path]:
    """One multi-SAE job and the single runs of two of its SAEs, trained once for the module's tests."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("multi")
    trees = {name: make_opt_ml(root / name, tiny_assets) for name in ("multi", "k4", "narrow")}
    try:
        assert _train(trees["multi"], monkeypatch, {**TINY_RUN, "saes": SAES}) == 0
        assert _train(trees["k4"], monkeypatch, {**TINY_RUN, "k": "4"}) == 0
        assert _train(trees["narrow"], monkeypatch, {**TINY_RUN, "expansion_factor": "2"}) == 0
    finally:
        monkeypatch.undo()
    return trees


def test_each_sae_has_its_own_folder_records_and_loads(trained: dict[str, Path]) -> None:
    """README: "each published to `model/<name>/` as a single run would publish it"."""
    from sae_lens import SAE

    model = trained["multi"] / "model"
    summary = json.loads((model / "saes.json").read_text())
    assert [m["name"] for m in summary["members"]] == ["k8", "k4", "narrow"]
    for name, k, d_sae in (("k8", 8, 1024), ("k4", 4, 1024), ("narrow", 8, 512)):
        folder = model / name
        for record in ("metrics.json", "cfg.json", "resolved_config.json", "training_log.jsonl", "plots"):
            assert (folder / record).exists(), f"{name}/{record}"
        sae = SAE.load_from_disk(str(folder))
        assert (sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (d_sae, "blocks.2.mlp.hook_post")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["tokens_trained"] == 16384 and metrics["d_sae"] == d_sae
        assert abs(metrics["l0"] - k) < 0.5, (name, metrics["l0"])  # TopK: exactly k active per token
        assert set(metrics["evaluation_by_source"]) == {"stories", "training_prompts", "heldout_prompts"}
        resolved = json.loads((folder / "resolved_config.json").read_text())
        assert resolved["values"]["k"] == k and resolved["values"]["saes"] == ""
        assert resolved["sources"]["k"] == ("saes" if name == "k4" else "preset:smoke")
    assert not (model / "cfg.json").exists()  # no SAE at the top: each is in its folder


def test_an_sae_of_the_first_ones_width_is_the_single_run_exactly(trained: dict[str, Path]) -> None:
    """docs/train.md: "so its weights, metrics and `cfg.json` are the single run's exactly".
    k4 has the first SAE's shapes, so its initialisation leaves torch's generator where the first one's does and
    the shared shuffling order is its single run's: the same tokens, in the same order, the same weights."""
    from safetensors.torch import load_file

    multi, single = trained["multi"] / "model" / "k4", trained["k4"] / "model"
    a, b = load_file(multi / "sae_weights.safetensors"), load_file(single / "sae_weights.safetensors")
    assert set(a) == set(b) and all((a[key] == b[key]).all() for key in a)
    m, s = (json.loads((p / "metrics.json").read_text()) for p in (multi, single))
    for key in ("explained_variance", "l0", "ce_loss_score", "dead_features"):
        assert m[key] == s[key], key
    assert json.loads((multi / "cfg.json").read_text()) == json.loads((single / "cfg.json").read_text())


def test_an_sae_of_another_width_matches_its_single_run_approximately(trained: dict[str, Path]) -> None:
    """docs/train.md: "the same tokens in another order, so close figures, not equal ones".
    narrow starts from its single run's weights, but its single run's generator, after a smaller
    initialisation, shuffles the buffer in another order: the same tokens in another order, so close, not equal."""
    from safetensors.torch import load_file

    multi, single = trained["multi"] / "model" / "narrow", trained["narrow"] / "model"
    a, b = load_file(multi / "sae_weights.safetensors"), load_file(single / "sae_weights.safetensors")
    assert not all((a[key] == b[key]).all() for key in a)
    m, s = (json.loads((p / "metrics.json").read_text()) for p in (multi, single))
    assert abs(m["explained_variance"] - s["explained_variance"]) < 0.05
    assert m["l0"] == s["l0"] == pytest.approx(8, abs=0.5)
    # not ce_loss_score: on the random tiny model zero-ablating the hook barely moves the loss, so the score's
    # denominator is near zero and it swings with any change; the loss with the SAE spliced in is steady
    assert abs(m["ce_loss_with_sae"] - s["ce_loss_with_sae"]) < 0.01


def test_sigterm_saves_every_sae_and_a_rerun_resumes_them(opt_ml: Path) -> None:
    """docs/train.md: "and SIGTERM saves all of them, as for a single run"."""
    saes = '[{"name": "k8"}, {"name": "k4", "k": 4}]'
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "65536", "saes": saes})  # 256 steps
    status, output = stop_train_at(opt_ml, 40)
    assert status == 143, output[-3000:]
    assert "checkpoint saved" in (opt_ml / "output" / "failure").read_text()
    assert not (opt_ml / "model" / "k8").exists()
    (run_dir,) = (opt_ml / "checkpoints").iterdir()
    assert run_dir.name.startswith("multi2-")
    interrupted = max((p for p in run_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    stopped_at = json.loads((interrupted / "checkpoint_complete.json").read_text())
    assert 40 <= stopped_at["step"] < 256 and stopped_at["tokens"] == 256 * stopped_at["step"]
    assert (interrupted / "activations_store_state.safetensors").is_file()
    for name in ("k8", "k4"):
        for file in ("sae_weights.safetensors", "trainer_state.pt", "checkpoint_complete.json"):
            assert (interrupted / name / file).is_file(), f"{name}/{file}"

    result = run_container(opt_ml, "train")
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"resuming from {interrupted}" in result.stdout
    resumed_steps = [int(m.group(1)) for m in METRIC_LINE.finditer(result.stdout)]
    assert resumed_steps[0] > stopped_at["step"], "the rerun started over instead of resuming"
    for name in ("k8", "k4"):
        metrics = json.loads((opt_ml / "model" / name / "metrics.json").read_text())
        assert metrics["tokens_trained"] == 65536 and metrics["resumed_from_tokens"] == stopped_at["tokens"]
        log = (opt_ml / "model" / name / "training_log.jsonl").read_text().splitlines()
        logged = [json.loads(line)["step"] for line in log]
        assert logged == sorted(set(logged)) and logged[-1] == 256


def test_a_checkpoint_with_one_torn_sae_is_skipped(tmp_path: Path) -> None:
    """docs/train.md: "a restart resumes every SAE from the newest checkpoint whose every marker matches"."""
    from container_src.checkpoints import write_marker
    from container_src.multi import latest_checkpoint

    for tokens in ("256", "512"):
        for name in ("a", "b"):
            (tmp_path / tokens / name).mkdir(parents=True)
            (tmp_path / tokens / name / "sae_weights.safetensors").write_bytes(b"w" * 64)
            write_marker(tmp_path / tokens / name, int(tokens) // 256, int(tokens))
        write_marker(tmp_path / tokens, int(tokens) // 256, int(tokens))
    (tmp_path / "512" / "b" / "sae_weights.safetensors").write_bytes(b"x" * 64)  # torn after its marker
    found = latest_checkpoint(tmp_path, ["a", "b"])
    assert found is not None and found[0] == tmp_path / "256"
    assert latest_checkpoint(tmp_path, ["a", "b", "c"]) is None  # an SAE the checkpoint lacks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"saes": '[{"k": 4, "lr": 0.01}]'}, "saes[0]: lr cannot differ between the SAEs of one job"),
        ({"saes": "[{k: 4}]"}, "saes: not valid JSON"),
        ({"saes": '[{"k": 32, "d_sae": 16}]'}, "saes[0] (topk-k32-d16): k=32: must not exceed d_sae=16"),
        ({"saes": '[{"name": "a"}, {"name": "a", "k": 4}]'}, "two SAEs are named a"),
        ({"saes": '[{"k": 4}]', "compile_sae": "true"}, "compile_sae=true: SAE-Lens's multi-SAE trainer"),
    ],
)
def test_a_bad_sae_list_is_refused_before_anything_loads(opt_ml: Path, extra: dict[str, str], message: str) -> None:
    """docs/train.md: "Any other key in an entry is refused";
    so are bad JSON, a k above d_sae, two SAEs of one name and compile_sae=true, all before the model loads."""
    write_hyperparameters(opt_ml, {**TINY_RUN, **extra})
    result = run_container(opt_ml, "train", timeout=120)
    assert result.returncode == 2, result.stdout[-2000:]
    assert message in (opt_ml / "output" / "failure").read_text()
    assert "loading roneneldan/TinyStories-33M" not in result.stdout + result.stderr


def test_viz_renders_each_sae_and_compares_them(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/viz.md: "one row per SAE, ranked by explained variance"."""
    base = trained["multi"]
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    small = ("--device", "cpu", "--prompt_tokens", "3000", "--story_tokens", "3000", "--n_features", "3")
    assert main(["viz", *small, "--ablate_top", "2", "--min_prompts", "2"]) == 0
    out = base / "model" / "dashboards"
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {r["name"]: r for r in comparison["saes"]}
    assert set(rows) == {"k8", "k4", "narrow"} and rows["narrow"]["d_sae"] == 512
    evs = [r["explained_variance"] for r in comparison["saes"]]
    assert evs == sorted(evs, reverse=True)  # ranked
    page = (out / "comparison.html").read_text()
    for name, r in rows.items():
        metrics = json.loads((base / "model" / name / "metrics.json").read_text())
        assert r["l0"] == metrics["l0"] and r["dead_feature_fraction"] == metrics["dead_feature_fraction"]
        assert (out / name / "index.html").is_file() and f'href="{name}/index.html"' in page
        features = json.loads((out / name / "features.json").read_text())
        assert "prompts_vs_stories" in r["features_passing"]
        for contrast, n in r["features_passing"].items():
            scores = [f["contrasts"][contrast]["score"] for f in features if f["contrasts"][contrast]]
            assert n == len([s for s in scores if s is not None and s > 0]) and n <= len(features)
    assert sum(rows["k8"]["features_passing"].values()) > 0  # the prompts differ from the stories


# The launcher tests' moto-backed AWS (own bucket and repository) and docker stub, and the sample prompt export.
aws = test_launcher.aws
export = test_launcher.export


def test_sweep_together_starts_one_job_that_lists_every_sae(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "its combinations become the `saes` list"."""
    import boto3

    from container_src.config import resolve
    from launcher import submit

    argv = ["--mode", "train", "--set", "preset=smoke", "--sweep", "k=4,8", "--sweep", "expansion_factor=2,4"]
    assert submit.main([*argv, "--sweep-together", "--prompts", str(export)]) == 0, caplog.text
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("sae-")]
    assert len(names) == 1
    hyperparameters = boto3.client("sagemaker").describe_training_job(TrainingJobName=names[0])["HyperParameters"]
    assert json.loads(hyperparameters["saes"]) == [
        {"k": k, "expansion_factor": x} for k in ("4", "8") for x in ("2", "4")
    ]
    # as the container reads the job's hyperparameters: four SAEs
    group = members(resolve(hyperparameters).config)
    assert [(m.name, m.config.k, m.config.expansion_factor) for m in group] == [
        ("topk-k4-x2", 4, 2), ("topk-k4-x4", 4, 4), ("topk-k8-x2", 8, 2), ("topk-k8-x4", 8, 4)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep", "lr=1e-4,3e-4", "--sweep-together"], "--sweep-together: lr cannot differ between the SAEs"),
        (["--sweep-together"], "--sweep-together needs a --sweep"),
        (["--sweep", "k=4,8", "--sweep-together", "--set", "saes=[]"], "drop --set saes"),
    ],
)
def test_sweep_together_refuses_what_one_job_cannot_train(
    argv: list[str],
    message: str,
    aws: dict[str, Any],
    export: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "or a `--set saes=…` beside it, is refused before anything is sent"."""
    from launcher import submit

    code = submit.main(["--mode", "train", "--set", "preset=smoke", *argv, "--prompts", str(export)])
    assert code == submit.EXIT_INPUT and message in caplog.text
    assert capsys.readouterr().out == ""  # no job started
