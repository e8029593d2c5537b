"""What the GPUs can do: the one place that knows which devices and SageMaker instance types have an NVIDIA GPU and
native bf16. The container asks by compute capability, the launcher (which never imports torch) by instance type."""

from __future__ import annotations

# SageMaker instance families with NVIDIA GPUs; everything else (ml.m, ml.c, ml.r, ml.t, Trainium, Inferentia) has
# no CUDA.
GPU_FAMILIES = ("ml.g", "ml.p")
# Native bf16 needs compute capability 8.0 (A100, A10G, L4, H100). A T4 (7.5) only emulates it, which
# torch.cuda.is_bf16_supported() counts as support by default, so the check is by capability.
BF16_MIN_MAJOR = 8
# The GPU families older than that: T4 (g4dn), V100 (p3, p3dn), K80 (p2), M60 (g3, g3s).
NO_BF16_FAMILIES = ("ml.g4dn.", "ml.p3.", "ml.p3dn.", "ml.p2.", "ml.g3.", "ml.g3s.")


# GPU families older than Turing: K80 (p2), M60 (g3, g3s), V100 (p3, p3dn). CUDA 13 (the image's torch build) no
# longer supports these architectures and torch's CUDA 13.0 wheels carry no kernels for them, whatever the driver.
NO_CUDA13_FAMILIES = {
    "ml.p2.": "K80",
    "ml.g3.": "M60",
    "ml.g3s.": "M60",
    "ml.p3.": "V100",
    "ml.p3dn.": "V100",
}


def gpu_without_cuda13(instance_type: str) -> str | None:
    """The GPU of an instance type the image's CUDA 13.0 cannot use (``V100`` for ml.p3.2xlarge), else None."""
    return next((gpu for family, gpu in NO_CUDA13_FAMILIES.items() if instance_type.startswith(family)), None)


def has_gpu(instance_type: str) -> bool:
    return instance_type.startswith(GPU_FAMILIES)


def capability_has_bf16(major: int) -> bool:
    """Whether a CUDA device of compute capability ``major``.x computes in bf16 natively."""
    return major >= BF16_MIN_MAJOR


def instance_has_bf16(instance_type: str) -> bool:
    """Whether the GPU of a SageMaker instance type computes in bf16 natively (false for a CPU type)."""
    return has_gpu(instance_type) and not instance_type.startswith(NO_BF16_FAMILIES)
