"""Shared fixtures: a tiny random GPT-Neo in a fake HF hub cache, a tiny story set, and SageMaker trees.

The hub cannot be reached in tests, so the model is served from a hub-cache folder with the hub off: the real
``from_pretrained`` call runs against it. The environment is set before any HF library is imported, because those
libraries read it once at import.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PROMPTS = ROOT / "data" / "sample_prompts"
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sae-tests-"))
HF_HOME = _SESSION_DIR / "hf"

# A tiny run: 64 steps of 256 tokens on the tiny model (d_in = 4 × 64 = 256 at mlp.hook_post).
TINY_RUN = {"preset": "smoke", "training_tokens": "16384", "log_to_wandb": "false"}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(
        {
            "HF_HOME": str(HF_HOME),
            "HF_HUB_CACHE": str(HF_HOME / "hub"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "WANDB_MODE": "offline",
            "TQDM_DISABLE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    for var in ("WANDB_API_KEY", "WANDB_SECRET_ID", "SAGEMAKER_BASE_DIR"):
        os.environ.pop(var, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_assets() -> dict[str, Path]:
    """The tiny model (as an $HF_HOME) and a 400-story TinyStories stand-in, built once per session."""
    from container_src.synthetic import make_stories, write_model_cache, write_story_dataset

    stories = make_stories(400)
    write_model_cache(HF_HOME, corpus=stories)
    story_dir = write_story_dataset(_SESSION_DIR / "control", n=400)
    return {"hf_home": HF_HOME, "stories": story_dir}


def make_opt_ml(base: Path, tiny_assets: dict[str, Path]) -> Path:
    """A SageMaker /opt/ml tree at ``base`` with channels model, control and prompts (the shipped sample)."""
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    (channels / "model").symlink_to(tiny_assets["hf_home"], target_is_directory=True)
    (channels / "control").symlink_to(tiny_assets["stories"], target_is_directory=True)
    shutil.copytree(SAMPLE_PROMPTS, channels / "prompts")
    return base


@pytest.fixture
def opt_ml(tmp_path: Path, tiny_assets: dict[str, Path]) -> Path:
    return make_opt_ml(tmp_path / "opt_ml", tiny_assets)


def write_hyperparameters(base: Path, values: dict[str, str]) -> None:
    path = base / "input" / "config" / "hyperparameters.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """In-process runs set W&B/HF variables and signal handlers; give every test a clean slate."""
    env = dict(os.environ)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    os.environ.clear()
    os.environ.update(env)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def container_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "container_src", *args]


def run_container(base: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the entry point in a fresh process, as the image would."""
    full_env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **(env or {})}
    return subprocess.run(
        container_cmd(*args), cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def stop_train_at(base: Path, step: int, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Run `train` in a fresh process and send it ``signum`` once its metric line for ``step`` (or a later one) is
    out; returns its exit status and output."""
    metric_step = re.compile(r"\[metric\] step=(\d+) ")
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        container_cmd("train"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = metric_step.search(line)
        if match and int(match.group(1)) >= step:
            proc.send_signal(signum)
            break
    lines += proc.stdout.readlines()
    return proc.wait(timeout=120), "".join(lines)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    cmd: list[str], port: int, what: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it accepts connections on 127.0.0.1:port."""
    import socket
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[dict[str, str]]:
    """A real moto server on loopback; yields the environment that points boto3 at it."""
    port = _free_port()
    # Tests that record the requests moto receives (/moto-api/recorder/...) get them in a temp file.
    proc = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        "moto server",
        env={**os.environ, "MOTO_RECORDER_FILEPATH": str(_SESSION_DIR / "moto-recording.jsonl")},
    )
    yield {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc.terminate()
    proc.wait(timeout=10)
