"""`bench` mode: it runs end to end on CPU and writes its figures; bad bench keys fail before any work.

Speed itself is never asserted here: the figures are checked for presence and sense, not for size.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from container_src.__main__ import main
from tests.conftest import ROOT, container_cmd, run_container

SPEED_FIELDS = (
    "tokens_per_s",
    "tokens",
    "seconds",
    "cpu_seconds",
    "steps",
    "batch_tokens",
    "peak_memory_bytes",
    "memory_at_start_bytes",
)


def test_bench_runs_and_writes_its_figures(tmp_path: Path) -> None:
    """docs/BENCHMARKS.md: "in a SageMaker job they also go to `model/bench.json`".
    A fresh process, as a user runs it: the HF libraries must see the bench's own stand-in model cache."""
    base = tmp_path / "opt_ml"
    (base / "input" / "config").mkdir(parents=True)
    # A SageMaker job's resource config: the instance type is priced, and model/bench.json is written.
    (base / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_instance_type": "ml.g5.xlarge"})
    )
    # in a job a relative path is under model/, which comes back in model.tar.gz
    out, profile = tmp_path / "figures" / "bench.json", base / "model" / "figures" / "profile.txt"
    result = run_container(
        base,
        "bench",
        "--preset=smoke",
        "--model_shape=tiny",
        "--steps=5",  # with prefetching a refill can come a step late: 5 hold two in every pipeline
        "--warmup_steps=1",
        "--lm_batches=1",
        "--training_tokens=204800",
        f"--json={out}",
        "--profile=figures/profile.txt",
        timeout=600,  # six pipelines and the profiled run, on a busy 2-core machine
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert json.loads((base / "model" / "bench.json").read_text()) == figures

    assert figures["device"] == "cpu" and figures["model_shape"] == "tiny"
    assert (figures["d_in"], figures["d_sae"], figures["k"]) == (256, 1024, 8)  # the smoke preset on the tiny shape
    for pipeline in ("ours", "bare"):
        speed = figures[pipeline]
        assert set(SPEED_FIELDS) <= set(speed)
        assert all(speed[key] > 0 for key in SPEED_FIELDS), speed
        # timed: whole refills of the activation buffer among the 5 steps after the warm-up
        assert 1 <= speed["steps"] <= 5 and speed["tokens"] == speed["steps"] * speed["batch_tokens"]
        assert speed["peak_memory_bytes"] >= speed["memory_at_start_bytes"]
    assert figures["ours"]["batch_tokens"] == 256 and figures["bare"]["batch_tokens"] == 4096  # SAE-Lens's default
    _check_peers(figures, result.stdout)
    assert figures["untimed"] == {}
    # bare runs SAE-Lens's precision defaults, whatever ours runs, and the figures say so
    assert figures["bare_precision"] == {
        "dtype": "float32",
        "autocast": False,
        "autocast_lm": False,
        "compile_sae": False,
        "compile_llm": False,
    }
    assert figures["bare_settings_not_default"]["dataset_path"] == "roneneldan/TinyStories"
    assert figures["ratio_ours_to_bare"] == pytest.approx(
        figures["ours"]["tokens_per_s"] / figures["bare"]["tokens_per_s"], rel=1e-2
    )
    lm = figures["lm"]
    assert all(lm[key] > 0 for key in ("tokens_per_s", "forward_to_hook_tokens_per_s", "full_forward_tokens_per_s"))
    for key, lean in (("sae_alone", True), ("sae_lens_step_alone", False)):  # our step, and SAE-Lens's own
        sae_alone = figures[key]
        assert sae_alone["steps"] == 5 and sae_alone["seconds"] > 0 and sae_alone["peak_memory_bytes"] > 0
        assert sae_alone["tokens_per_s"] == pytest.approx(5 * 256 / sae_alone["seconds"], rel=1e-2)
        assert sae_alone["lean_step"] is lean
    projection = figures["projection"]
    assert projection["instance_type"] == "ml.g5.xlarge" and projection["usd_per_hour"] > 0
    assert projection["wall_s"] == pytest.approx(204800 / figures["ours"]["tokens_per_s"], rel=1e-2)
    assert projection["usd"] == pytest.approx(projection["wall_s"] / 3600 * projection["usd_per_hour"], abs=0.01)
    assert "tokens/s" in result.stdout and "ratio ours / bare" in result.stdout and "SAE step alone" in result.stdout
    assert "bare SAE-Lens defaults (fp32)" in result.stdout
    assert f"projection at ours' speed on {figures['device_name']}: 204,800 tokens" in result.stdout
    # ours once more under the profiler: the 5 steps after the warm-up, one SAE update (fused Adam) each
    table = profile.read_text()
    assert table.startswith(
        "ours (train), 5 steps after 1 warm-up steps on cpu, sorted by self_cpu_time_total; CPU "
        "operators of all threads"
    )
    adam = next(line for line in table.splitlines() if "aten::_fused_adam" in line)
    assert adam.split()[-1] == "5", adam  # the last column counts the calls
    # The bench trained in a temporary tree of its own: nothing of a run is left in the caller's.
    assert sorted(p.name for p in (base / "model").iterdir()) == ["bench.json", "figures"]
    assert not (base / "checkpoints").exists()


def _check_peers(figures: dict[str, Any], stdout: str) -> None:
    """SAE-Lens with its best settings and sparsify ran beside ours at ours' batch, and their ratios are reported."""
    for pipeline in ("tuned", "sparsify"):
        speed = figures[pipeline]
        assert set(SPEED_FIELDS) <= set(speed) and all(speed[key] > 0 for key in SPEED_FIELDS), speed
        assert speed["batch_tokens"] == 256 and 1 <= speed["steps"] <= 5
        assert speed["tokens"] == speed["steps"] * 256
        assert figures[f"ratio_ours_to_{pipeline}"] == pytest.approx(
            figures["ours"]["tokens_per_s"] / speed["tokens_per_s"], rel=1e-2
        )
        assert figures[f"ratio_ours_to_{pipeline}_cpu_time"] > 0
        assert len(figures["all_runs_tokens_per_s"][pipeline]) == 1
    # the tuned run takes ours' batch and buffer; on CPU there is no bf16 autocast and train does not compile
    tuned = figures["tuned_settings_not_default"]
    assert (tuned["train_batch_size_tokens"], tuned["store_batch_size_prompts"], tuned["n_batches_in_buffer"]) == (
        256,
        4,
        8,
    )
    assert (tuned["autocast"], tuned["autocast_lm"], tuned["compile_sae"]) == (False, False, False)
    assert tuned["prefetch_llm_batches"] == figures["config"]["prefetch_llm_batches"]
    sparsify = figures["sparsify_settings"]
    assert sparsify["hookpoint"] == "h.2.mlp.act" and (sparsify["num_latents"], sparsify["k"]) == (1024, 8)
    assert sparsify["batch_size_sequences"] == 4 and sparsify["model_dtype"] == "float32"  # 256 tokens, context 64
    assert "ratio ours / SAE-Lens best settings" in stdout and "ratio ours / sparsify" in stdout


def test_sparsify_hookpoints_are_the_transformer_lens_hooks(tiny_assets: dict[str, Path]) -> None:
    """Internal: the HF module bench hooks for sparsify gives the TransformerLens hook's activations.
    sparsify hooks HF modules: each one bench maps a TransformerLens hook to gives that hook's activations."""
    import torch
    from transformers import AutoModel

    from container_src.bench_peers import SPARSIFY_HOOKS, sparsify_hookpoint
    from container_src.model import load_model

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    hf = AutoModel.from_pretrained("roneneldan/TinyStories-33M", dtype=torch.float32)
    tokens = torch.randint(0, lm.cfg.d_vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    hooks = [pattern.replace(r"(\d+)", "1").replace("\\", "") for pattern in SPARSIFY_HOOKS]
    assert hooks == ["blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    _, cache = lm.run_with_cache(tokens, names_filter=hooks)
    seen: dict[str, torch.Tensor] = {}
    for hook in hooks:
        module = hf.get_submodule(str(sparsify_hookpoint(hook)))

        def keep(_module: Any, _inputs: Any, out: Any, hook: str = hook) -> None:
            seen[hook] = out[0] if isinstance(out, tuple) else out

        module.register_forward_hook(keep)
    with torch.no_grad():
        hf(tokens)
    for hook in hooks:
        torch.testing.assert_close(seen[hook], cache[hook], rtol=1e-4, atol=1e-4, msg=hook)
    assert sparsify_hookpoint("blocks.1.attn.hook_z") is None


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--model_shape=huge"], ["model_shape='huge'", "tinystories-33m"]),
        (["--warmup_steps=0"], ["warmup_steps=0", "at least 1"]),
        (["--instance_type=ml.x9.mega"], ["instance_type='ml.x9.mega'", "ml.g5.xlarge"]),
        (["--steps=ten"], ["steps='ten'", "int"]),
        (["--profile=."], ["profile='.'", "is a folder"]),
        (
            ["--architecture=batchtopk"],
            ["architecture='batchtopk'", "sparsify trains TopK SAEs only", "--sparsify false"],
        ),
        (["--hook_name=blocks.2.attn.hook_z"], ["hook_name='blocks.2.attn.hook_z'", "blocks.N.mlp.hook_post"]),
        (["--train_batch_size_tokens=1000"], ["train_batch_size_tokens=1000", "multiple of context_size=512"]),
    ],
    ids=[
        "unknown shape",
        "no warm-up",
        "unpriced instance",
        "wrong type",
        "profile to a folder",
        "sparsify: not topk",
        "sparsify: no hookpoint",
        "sparsify: partial sequences",
    ],
)
def test_bad_bench_keys_fail_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: list[str]
) -> None:
    """docs/BENCHMARKS.md: "anything else is refused before any work"."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setattr("tempfile.TemporaryDirectory", _no_work)
    assert main(["bench", *flags]) == 2
    failure = (tmp_path / "output" / "failure").read_text()
    for text in expected:
        assert text in failure


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("bench started work on a bad configuration")


def _burn_then_wait(seconds: float, burnt: Any, release: Any) -> None:
    while time.process_time() < seconds:
        pass
    burnt.set()
    release.wait(30)


def test_cpu_time_includes_worker_processes() -> None:
    """docs/BENCHMARKS.md: "bench now adds the time of its worker processes".
    With data_worker the packing runs in a process of its own: the CPU time bench reports must count it, also
    after that worker has ended."""
    from container_src.timing import StepClock

    context = multiprocessing.get_context("spawn")
    burnt, release = context.Event(), context.Event()
    clock = StepClock("cpu")
    before = clock.cpu_seconds()
    worker = context.Process(target=_burn_then_wait, args=(0.5, burnt, release))
    worker.start()
    assert burnt.wait(60)
    during = clock.cpu_seconds()
    release.set()
    worker.join(30)
    assert during - before >= 0.45  # the worker burnt 0.5 s; psutil reads CPU time in clock ticks
    assert clock.cpu_seconds() >= during  # the ended worker keeps its share


def test_too_few_steps_report_the_rest_and_fail(tmp_path: Path) -> None:
    """docs/BENCHMARKS.md: "the other figures are still printed and written".
    One step after the warm-up holds no whole refill cycle of either pipeline: the other figures are still
    printed and written, and the run ends with status 2, naming the fix."""
    base, out = tmp_path / "opt_ml", tmp_path / "bench.json"
    flags = ["--preset=smoke", "--model_shape=tiny", "--steps=1", "--warmup_steps=1", "--lm_batches=1"]
    # the peers beside bare, each off by its key
    result = run_container(base, "bench", *flags, "--tuned=false", "--sparsify=false", f"--json={out}", timeout=480)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["ours"] is None and figures["bare"] is None and set(figures["untimed"]) == {"ours", "bare"}
    assert figures["tuned"] is None and figures["sparsify"] is None and figures["ratio_ours_to_sparsify"] is None
    assert figures["all_runs_tokens_per_s"]["tuned"] == [] and figures["all_runs_tokens_per_s"]["sparsify"] == []
    assert "SAE-Lens best settings" not in result.stdout and "sparsify" not in result.stdout
    assert figures["ratio_ours_to_bare"] is None and figures["projection"] is None
    assert figures["lm"]["tokens_per_s"] > 0 and figures["sae_alone"]["tokens_per_s"] > 0
    assert result.stdout.count("not timed: no whole buffer refill cycle after the 1 warm-up steps") == 2
    failure = (base / "output" / "failure").read_text()
    assert "steps=1: too few to time ours and bare" in failure and "raise steps" in failure


def test_a_context_longer_than_the_model_is_named(tmp_path: Path) -> None:
    """docs/configuration.md: "Tokens per sequence fed to the model. Must not exceed the model's context"."""
    base = tmp_path / "opt_ml"
    # a batch of whole sequences, which sparsify needs, so that the model's context is what fails
    flags = ["--preset=smoke", "--model_shape=tiny", "--context_size=4096", "--train_batch_size_tokens=8192"]
    result = run_container(base, "bench", *flags, timeout=240)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "context_size=4096: the model's context is only" in (base / "output" / "failure").read_text()


def test_sigterm_stops_a_mode_other_than_train_with_143(tmp_path: Path) -> None:
    """README: "every mode then stops with 143 (SIGTERM) or 130 (SIGINT)".
    docker stop or StopTrainingJob during bench (or viz): status 143 and a failure file. In the image Python is
    PID 1, which a signal without a handler would not stop at all."""
    base = tmp_path / "opt_ml"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        container_cmd("bench", "--preset=smoke", "--model_shape=tiny"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "bench: writing a random" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 143, rest[-3000:]
    assert "bench failed: Interrupted: stopped by SIGTERM" in (base / "output" / "failure").read_text()
