"""What the GPUs can do: the one place that knows which devices and SageMaker instance types have an NVIDIA GPU, native
bf16, a GPU the image's CUDA 13.0 supports, and how much GPU memory. The container asks by compute capability, the
launcher (which never imports torch) by instance type."""

from __future__ import annotations

# SageMaker instance families with NVIDIA GPUs; everything else (ml.m, ml.c, ml.r, ml.t, Trainium, Inferentia) has
# no CUDA.
GPU_FAMILIES = ("ml.g", "ml.p")
# The GPU families whose compute capability is below 8.0, with their GPU; every other GPU family (A10G, L4, L40S, A100,
# H100, …) is 8.0 or newer.
OLDER_GPUS = {
    "ml.g4dn.": ("T4", (7, 5)),
    "ml.p3.": ("V100", (7, 0)),
    "ml.p3dn.": ("V100", (7, 0)),
    "ml.g3.": ("M60", (5, 2)),
    "ml.g3s.": ("M60", (5, 2)),
    "ml.p2.": ("K80", (3, 7)),
}
# Native bf16 needs compute capability 8.0. A T4 (7.5) only emulates it, which torch.cuda.is_bf16_supported() counts
# as support by default, so the check is by capability.
BF16_MIN_MAJOR = 8
# CUDA 13 (the image's torch build) supports Turing (7.5) and newer; torch's CUDA 13.0 wheels carry no kernels for
# older GPUs, whatever the driver.
CUDA13_MIN_CAPABILITY = (7, 5)


def has_gpu(instance_type: str) -> bool:
    return instance_type.startswith(GPU_FAMILIES)


def _older_gpu(instance_type: str) -> tuple[str, tuple[int, int]] | None:
    return next((gpu for family, gpu in OLDER_GPUS.items() if instance_type.startswith(family)), None)


def gpu_without_cuda13(instance_type: str) -> str | None:
    """The GPU of an instance type the image's CUDA 13.0 cannot use (``V100`` for ml.p3.2xlarge), else None."""
    older = _older_gpu(instance_type)
    return older[0] if older and older[1] < CUDA13_MIN_CAPABILITY else None


def capability_has_bf16(major: int) -> bool:
    """Whether a CUDA device of compute capability ``major``.x computes in bf16 natively."""
    return major >= BF16_MIN_MAJOR


def instance_has_bf16(instance_type: str) -> bool:
    """Whether the GPU of a SageMaker instance type computes in bf16 natively (false for a CPU type)."""
    older = _older_gpu(instance_type)
    return has_gpu(instance_type) and (older is None or capability_has_bf16(older[1][0]))


# GPU memory per instance family, GiB per GPU (about what torch reports as the device's total memory). A job uses one
# GPU, so a multi-GPU type (ml.p4de.24xlarge: 8 × A100) counts the memory of one.
GPU_MEMORY_GIB = {
    "ml.g4dn.": ("T4", 14.5),
    "ml.g5.": ("A10G", 22.0),
    "ml.g6.": ("L4", 22.0),
    "ml.g6e.": ("L40S", 44.4),
    "ml.p3.": ("V100", 15.7),
    "ml.p3dn.": ("V100", 31.7),
    "ml.p4d.": ("A100", 39.4),
    "ml.p4de.": ("A100", 79.1),
    "ml.p5.": ("H100", 79.1),
    "ml.p5e.": ("H200", 139.8),
    "ml.p5en.": ("H200", 139.8),
}
# The instance types suggested for a run, smallest GPU memory first: the smallest of each family the image supports.
SUGGESTED_INSTANCES = (
    "ml.g5.xlarge",
    "ml.g6.xlarge",
    "ml.p4d.24xlarge",
    "ml.g6e.xlarge",
    "ml.p4de.24xlarge",
    "ml.p5.48xlarge",
    "ml.p5e.48xlarge",
)


def gpu_memory(instance_type: str) -> tuple[str, float] | None:
    """(GPU, GiB of memory per GPU) of a SageMaker instance type; None for a type without a GPU or not in the table."""
    return next((gpu for family, gpu in GPU_MEMORY_GIB.items() if instance_type.startswith(family)), None)
