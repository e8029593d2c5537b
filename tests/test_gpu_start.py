"""The start-up GPU check: the decision from the host's driver (stubbed: no GPU runs here), the failure a GPU run
ends with on an unusable host, and docker/train's compatibility-library switch, run with a stub nvidia-smi or a stub
driver version file and a folder of stand-in compatibility libraries."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from container_src import gpu
from container_src.config import ConfigError
from container_src.model import pick_runtime

ROOT = Path(__file__).resolve().parents[1]
COMPAT = "580.95.05"


@pytest.mark.parametrize(
    ("driver", "gpu_instance", "action"),
    [
        ("535.183.01", True, "compat"),  # older, a forward-compatible branch
        ("570.172.08", None, "compat"),  # older, outside a job
        ("470.256.02", True, "refuse"),  # older, a branch forward compatibility does not cover
        ("580.65.06", True, "native"),  # the branch CUDA 13.0 needs
        ("595.58.03", True, "native"),  # newer
        (None, True, "refuse"),  # a GPU instance whose container sees no driver
        (None, None, "cpu"),  # no GPU
        (None, False, "cpu"),  # a CPU instance
        ("535.183.01", False, "cpu"),  # a CPU instance never gets the compatibility libraries
    ],
)
def test_decision_by_driver(driver: str | None, gpu_instance: bool | None, action: str) -> None:
    """README: "it enables NVIDIA's forward-compatibility libraries at start"."""
    verdict = gpu.decide(driver, COMPAT, gpu_instance)
    assert verdict.action == action
    if driver and action != "cpu":
        assert driver in verdict.reason


def test_an_older_driver_without_the_libraries_is_refused() -> None:
    """README: "on any other host it stops at once with exit 1 and says why"."""
    verdict = gpu.decide("535.183.01", None, True)
    assert verdict.action == "refuse" and "compatibility libraries" in verdict.reason


def test_driver_version_parsers() -> None:
    """docs/container.md: "(the driver from `nvidia-smi`, else `/proc/driver/nvidia/version`)"."""
    assert gpu.parse_nvidia_smi("535.183.01\n535.183.01\n") == "535.183.01"
    assert gpu.parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver") is None
    proc = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\nGCC version: gcc"
    assert gpu.parse_proc_version(proc) == "470.256.02"
    assert gpu.parse_proc_version("") is None


def fake_compat(folder: Path, version: str = COMPAT) -> Path:
    """Stand-in compatibility libraries: the file names docker/train and container_src.gpu read, not real ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"libcuda.so.{version}").write_text("")
    (folder / "libcuda.so.1").symlink_to(f"libcuda.so.{version}")
    return folder


def fake_driver(tmp_path: Path, version: str | None, via: str) -> dict[str, str]:
    """Environment for a host with driver ``version`` (None: no driver), seen through a stub nvidia-smi on PATH or
    a stub version file. The stub nvidia-smi stands in for the host's driver, which no test machine has."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    version_file = tmp_path / "version"
    if version and via == "nvidia-smi":
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\necho {version}\n")
        smi.chmod(0o755)
    elif version:
        version_file.write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Thu Jan 1 2026\n")
    return {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "SAE_NVIDIA_VERSION_FILE": str(version_file),
        "SAE_CUDA_COMPAT_DIR": str(fake_compat(tmp_path / "compat")),
    }


def run_shim(tmp_path: Path, env: dict[str, str], instance: str | None = None) -> dict[str, str]:
    """docker/train with its final `exec python -m container_src train` caught by a `python` stub that prints the
    environment it was given; the decision itself runs the real `python -m container_src.gpu`."""
    stub_dir = tmp_path / "exec"
    stub_dir.mkdir(exist_ok=True)
    stub = stub_dir / "python"
    stub.write_text(
        f'#!/bin/sh\nif [ "$2" = container_src.gpu ]; then exec {sys.executable} "$@"; fi\n'
        'echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"\necho "SAE_CUDA_COMPAT=$SAE_CUDA_COMPAT"\necho "ARGS=$*"\n'
    )
    stub.chmod(0o755)
    base = tmp_path / "ml"
    if instance:
        (base / "input" / "config").mkdir(parents=True, exist_ok=True)
        (base / "input" / "config" / "resourceconfig.json").write_text(f'{{"current_instance_type": "{instance}"}}')
    full = {**env, "PATH": f"{stub_dir}:{env['PATH']}", "PYTHONPATH": str(ROOT), "SAGEMAKER_BASE_DIR": str(base)}
    full["LD_LIBRARY_PATH"] = "/usr/local/nvidia/lib64"
    out = subprocess.run(
        ["sh", str(ROOT / "docker" / "train"), "--k", "32"], env=full, capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


@pytest.mark.parametrize("via", ["nvidia-smi", "version file"])
def test_shim_puts_the_libraries_first_only_on_an_older_driver(tmp_path: Path, via: str) -> None:
    """docs/container.md: "`train` puts `/usr/local/cuda/compat` first on `LD_LIBRARY_PATH` before Python starts"."""
    env = fake_driver(tmp_path, "535.183.01", via)
    seen = run_shim(tmp_path, env, "ml.g5.xlarge")
    compat = env["SAE_CUDA_COMPAT_DIR"]
    assert seen["LD_LIBRARY_PATH"] == f"{compat}:/usr/local/nvidia/lib64"
    assert seen["SAE_CUDA_COMPAT"] == compat
    assert seen["ARGS"] == "-m container_src train --k 32"


@pytest.mark.parametrize(
    ("driver", "instance"),
    [("580.82.07", "ml.g5.xlarge"), ("595.58.03", None), (None, "ml.m5.xlarge"), ("535.183.01", "ml.m5.xlarge")],
)
def test_shim_leaves_the_path_alone_otherwise(tmp_path: Path, driver: str | None, instance: str | None) -> None:
    """docs/container.md: "CUDA 13.0 runs natively; the compatibility libraries stay off".
    Equal or newer drivers, no driver, and a CPU instance (whatever it reports) run without the libraries."""
    seen = run_shim(tmp_path, fake_driver(tmp_path, driver, "nvidia-smi"), instance)
    assert seen["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    assert seen["SAE_CUDA_COMPAT"] == ""


def test_shim_without_the_libraries_leaves_the_path_alone(tmp_path: Path) -> None:
    """Pins: an image without the compatibility libraries leaves LD_LIBRARY_PATH as it is (not in the docs)."""
    env = fake_driver(tmp_path, "535.183.01", "nvidia-smi")
    env["SAE_CUDA_COMPAT_DIR"] = str(tmp_path / "missing")
    assert run_shim(tmp_path, env, "ml.g5.xlarge")["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"


def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver: str | None, *, compat_in_use: bool) -> None:
    for key, value in fake_driver(tmp_path, driver, "version file").items():
        monkeypatch.setenv(key, value)
    if compat_in_use:
        monkeypatch.setenv(gpu.IN_USE_ENV, str(tmp_path / "compat"))
    else:
        monkeypatch.delenv(gpu.IN_USE_ENV, raising=False)


def test_an_unusable_host_is_a_host_error_naming_driver_and_cuda(monkeypatch, tmp_path) -> None:
    """docs/container.md: "exit 1, `output/failure` naming the driver, the CUDA it needs and what to do"."""
    host(monkeypatch, tmp_path, "470.256.02", compat_in_use=False)
    with pytest.raises(gpu.HostError) as err:
        pick_runtime("auto", "auto", job_instance="ml.g5.xlarge")
    message = str(err.value)
    for part in ("ml.g5.xlarge", "470.256.02", "CUDA 13.0", "R580", "device=cpu"):
        assert part in message
    assert pick_runtime("cpu", "auto", job_instance="ml.g5.xlarge").device == "cpu"  # the escape hatch


def test_a_gpu_job_that_sees_no_driver_is_a_host_error(monkeypatch, tmp_path) -> None:
    """docs/container.md: "any other (R470, R525, R545 …) or none on a GPU instance"."""
    host(monkeypatch, tmp_path, None, compat_in_use=False)
    with pytest.raises(gpu.HostError, match=r"ml.g5.xlarge, which has an NVIDIA GPU.*no NVIDIA driver is visible"):
        pick_runtime("auto", "auto", job_instance="ml.g5.xlarge")
    assert pick_runtime("auto", "auto", job_instance="ml.m5.xlarge").device == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):  # asking for cuda on a machine without one: the config
        pick_runtime("cuda", "auto")


def test_compat_in_use_but_no_device_says_data_center_only(monkeypatch, tmp_path) -> None:
    """docs/container.md: "for example forward compatibility on a GPU that is not a data-center one"."""
    host(monkeypatch, tmp_path, "535.183.01", compat_in_use=True)  # torch sees no device here
    with pytest.raises(gpu.HostError, match=r"compatibility libraries in use.*data-center GPUs"):
        pick_runtime("auto", "auto", job_instance="ml.g5.xlarge")


def test_a_gpu_run_logs_driver_compat_cuda_gpu_and_memory(monkeypatch, tmp_path, caplog) -> None:
    """docs/container.md: "logs the driver, whether the compatibility libraries are in use, the GPU, its memory".
    torch.cuda is stubbed to report an A10G (no GPU here); the driver comes from a stub version file."""
    import torch

    host(monkeypatch, tmp_path, "535.183.01", compat_in_use=True)
    props = types.SimpleNamespace(name="NVIDIA A10G", major=8, minor=6, total_memory=23 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: props)
    caplog.set_level("INFO")
    runtime = pick_runtime("auto", "auto", job_instance="ml.g5.xlarge")
    assert (runtime.device, runtime.device_name) == ("cuda", "NVIDIA A10G")
    assert f"NVIDIA driver: 535.183.01; CUDA compatibility libraries: in use ({tmp_path / 'compat'})" in caplog.text
    assert "GPU: NVIDIA A10G, 23.0 GiB, compute capability 8.6" in caplog.text
    assert f"built for CUDA {torch.version.cuda}" in caplog.text


def test_the_run_ends_with_exit_1_and_a_failure_file(monkeypatch, tmp_path) -> None:
    """README: "on any other host it stops at once with exit 1 and says why".
    The whole entry point on a g5 job whose host runs R470: status 1, and output/failure says why."""
    host(monkeypatch, tmp_path, "470.256.02", compat_in_use=False)
    base = tmp_path / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "resourceconfig.json").write_text('{"current_instance_type": "ml.g5.xlarge"}')
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    # a process of its own, as in a job: bench refuses a process whose HF libraries another test imported
    run = subprocess.run(
        [sys.executable, "-m", "container_src", "bench", "--model_shape", "tiny", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("bench failed: HostError:") and "470.256.02" in failure and "R580" in failure


def test_compat_version_reads_the_library_name(tmp_path: Path) -> None:
    """Internal: the compatibility libraries' version, read from the library's file name."""
    assert gpu.compat_version(fake_compat(tmp_path / "c", "580.95.05")) == "580.95.05"
    assert gpu.compat_version(tmp_path / "empty") is None
    assert (tmp_path / "c" / "libcuda.so.1").is_symlink()
