"""The GPU host check at start: which NVIDIA driver the host runs, whether the image's CUDA runs on it natively, with
NVIDIA's forward-compatibility libraries, or not at all. ``docker/train`` asks ``python -m container_src.gpu
compat-dir`` before Python imports torch (the libraries must be on LD_LIBRARY_PATH when the process starts); every
GPU run then logs what it found and refuses an unusable host (exit 1). docs/container.md has the sources."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CUDA = "13.0"
"""The CUDA release of the image's torch build (PyPI's torch 2.13.0 wheels)."""
NATIVE_BRANCH = 580
"""CUDA 13.x runs on a driver of the R580 branch or newer (NVIDIA: CUDA Compatibility, minor version compatibility)."""
COMPAT_BRANCHES = (535, 550, 565, 570, 575)
"""Older branches on which CUDA 13.0's forward-compatibility package runs, on data-center GPUs only (the branches
NVIDIA's own CUDA 13.0 images accept, NVIDIA_REQUIRE_CUDA of nvidia/cuda:13.0.2)."""
IN_USE_ENV = "SAE_CUDA_COMPAT"
"""Set by docker/train to the compatibility folder it put on LD_LIBRARY_PATH."""


def compat_dir() -> Path:
    """Where the image keeps the compatibility libraries (``$SAE_CUDA_COMPAT_DIR`` moves it, for tests)."""
    return Path(os.environ.get("SAE_CUDA_COMPAT_DIR", "/usr/local/cuda/compat"))


def version_file() -> Path:
    """The kernel module's version file (``$SAE_NVIDIA_VERSION_FILE`` moves it, for tests)."""
    return Path(os.environ.get("SAE_NVIDIA_VERSION_FILE", "/proc/driver/nvidia/version"))


class HostError(RuntimeError):
    """The host cannot run the image's CUDA: a problem of the machine, not of the configuration (exit status 1)."""


@dataclass(frozen=True)
class Verdict:
    action: str
    """``cpu`` (no driver: nothing to do), ``native``, ``compat`` (put the compatibility libraries first) or
    ``refuse``."""
    reason: str


def branch(version: str) -> int:
    """The driver branch of a version string: 535 for ``535.183.01``."""
    return int(version.split(".")[0])


def parse_nvidia_smi(text: str) -> str | None:
    """The driver version from ``nvidia-smi --query-gpu=driver_version --format=csv,noheader`` (first GPU)."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return first if re.fullmatch(r"\d+\.\d+(\.\d+)?", first) else None


def parse_proc_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` (``NVRM version: NVIDIA UNIX x86_64 Kernel Module
    535.183.01 …``)."""
    match = re.search(r"Kernel Module\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def driver_version() -> str | None:
    """The host's NVIDIA driver: nvidia-smi when the container has it, else the kernel module's version file;
    None when neither answers (no GPU passed in, or a CPU host)."""
    if smi := shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if found := parse_nvidia_smi(out.stdout):
                return found
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return parse_proc_version(version_file().read_text())
    except OSError:
        return None


def compat_version(folder: Path | None = None) -> str | None:
    """The driver version the compatibility libraries in ``folder`` (default :func:`compat_dir`) were built from
    (``libcuda.so.580.95.05``), or None when there are none."""
    names = [p.name for p in (folder or compat_dir()).glob("libcuda.so.*")]
    versions = [m.group(1) for n in names if (m := re.fullmatch(r"libcuda\.so\.(\d+\.[\d.]+)", n))]
    return max(versions, key=lambda v: [int(x) for x in re.findall(r"\d+", v)]) if versions else None


def decide(driver: str | None, compat: str | None, gpu_instance: bool | None = None) -> Verdict:
    """What to do on a host whose driver is ``driver`` with compatibility libraries of version ``compat`` in the
    image. ``gpu_instance``: whether the SageMaker job's instance type has a GPU (None outside a job)."""
    if driver is None:
        if gpu_instance:
            return Verdict("refuse", "no NVIDIA driver is visible in the container (no GPU passed in)")
        return Verdict("cpu", "no NVIDIA driver: no GPU")
    if gpu_instance is False:  # a CPU instance never gets the compatibility libraries
        return Verdict("cpu", f"driver {driver} on a CPU instance")
    host = branch(driver)
    if host >= NATIVE_BRANCH:
        return Verdict("native", f"driver {driver} (R{host}) runs CUDA {CUDA} natively")
    if host not in COMPAT_BRANCHES:
        supported = ", ".join(f"R{b}" for b in COMPAT_BRANCHES)
        return Verdict(
            "refuse",
            f"driver {driver} (R{host}) is older than CUDA {CUDA} needs (R{NATIVE_BRANCH} or newer), and NVIDIA's "
            f"forward compatibility for CUDA {CUDA} supports only {supported}",
        )
    if compat is None or branch(compat) <= host:
        return Verdict(
            "refuse",
            f"driver {driver} (R{host}) needs the CUDA {CUDA} compatibility libraries, which "
            f"are not installed here (none in {compat_dir()})",
        )
    return Verdict("compat", f"driver {driver} (R{host}) with the CUDA {CUDA} compatibility libraries ({compat})")


def unusable_message(driver: str | None, verdict: Verdict, job_instance: str | None) -> str:
    """The failure message for a host the image cannot use: the driver, what CUDA needs, what to do."""
    where = f"this job runs on {job_instance}, which has an NVIDIA GPU, but " if job_instance else ""
    return (
        f"{where}the GPU is unusable: {verdict.reason}. torch here is built for CUDA {CUDA}, which needs an NVIDIA "
        f"driver of R{NATIVE_BRANCH} or newer, or (data-center GPUs only: A10G, A100, L4, L40S, H100, T4 …) one of "
        f"{', '.join(f'R{b}' for b in COMPAT_BRANCHES)} with the compatibility libraries the image enables at start. "
        "Run on an instance type whose host has such a driver (docs/container.md lists what is known), or set "
        "device=cpu to run on the CPU anyway"
    )


def check(job_instance: str | None, gpu_instance: bool | None, cuda_visible: bool) -> Verdict:
    """The start-up check of a run that may use the GPU: log the driver and the decision; raise HostError when the
    host has a GPU the image cannot use (a driver it cannot run on, or torch sees no device)."""
    driver = driver_version()
    in_use = os.environ.get(IN_USE_ENV, "")
    verdict = decide(driver, compat_version(Path(in_use)) if in_use else compat_version(), gpu_instance)
    logger.info(
        "NVIDIA driver: %s; CUDA compatibility libraries: %s; %s",
        driver or "none",
        f"in use ({in_use})" if in_use else "not in use",
        verdict.reason,
    )
    if verdict.action == "refuse":
        raise HostError(unusable_message(driver, verdict, job_instance))
    if verdict.action == "compat" and not in_use:
        raise HostError(
            unusable_message(
                driver,
                Verdict(
                    "refuse",
                    verdict.reason + ", but they were not put on "
                    "LD_LIBRARY_PATH at start (start the image through its `train` program)",
                ),
                job_instance,
            )
        )
    if driver is not None and verdict.action != "cpu" and not cuda_visible:
        why = "torch sees no CUDA device"
        if in_use:
            why += " with the compatibility libraries in use (they work only on data-center GPUs)"
        raise HostError(unusable_message(driver, Verdict("refuse", f"driver {driver}: {why}"), job_instance))
    return verdict


def main(argv: list[str]) -> int:
    """``compat-dir``: print the compatibility folder when this host needs it, else nothing (docker/train)."""
    if argv != ["compat-dir"]:
        sys.stderr.write("usage: python -m container_src.gpu compat-dir\n")
        return 2
    from container_src.hardware import has_gpu
    from container_src.paths import ContainerPaths

    instance = ContainerPaths.from_env().instance_type()
    verdict = decide(driver_version(), compat_version(), has_gpu(instance) if instance else None)
    if verdict.action == "compat":
        sys.stdout.write(f"{compat_dir()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
