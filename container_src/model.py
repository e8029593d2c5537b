"""Loading the language model, choosing device and precision, and reading d_in at the hook."""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from container_src import gpu
from container_src.config import ConfigError
from container_src.hardware import capability_has_bf16, has_gpu

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes; decided once from the hardware and the config."""

    device: str
    device_name: str
    autocast: bool
    """bf16 autocast for the SAE step and the model's forward pass."""
    compile_sae: bool = False
    """torch.compile the SAE's training forward pass."""

    @property
    def precision(self) -> str:
        return "bf16-autocast" if self.autocast else "fp32"


def c_compiler() -> str | None:
    """The C compiler Triton builds its kernel launchers with, or None: ``$CC`` whenever it is set (Triton then
    runs it as it is, so an empty or missing one means none), else gcc, else clang."""
    cc = os.environ.get("CC")
    if cc is not None:
        return shutil.which(cc) if cc else None
    return shutil.which("gcc") or shutil.which("clang")


def pick_runtime(
    device: str, precision: str, compile_sae: bool | None = False, job_instance: str | None = None
) -> Runtime:
    """Resolve ``device``/``precision``/``compile_sae`` of the config against the hardware: bf16 only where the GPU
    supports it; the SAE compiled by default on a CUDA device where Triton finds a C compiler. ``job_instance``: the
    SageMaker job's instance type; on one with an NVIDIA GPU, ``device=auto`` never falls back to the CPU. Unless
    ``device`` is cpu, the host's driver is checked first (:func:`container_src.gpu.check`): a GPU the image cannot use
    raises :class:`container_src.gpu.HostError`."""
    import torch

    if device != "cpu":  # device=cpu is the escape hatch: no GPU check at all
        # a host with a GPU the image cannot use stops here, with exit 1 (a problem of the machine, not the config)
        gpu.check(job_instance, has_gpu(job_instance) if job_instance else None, torch.cuda.is_available())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: no CUDA device is visible; use device=auto or cpu")
        props = torch.cuda.get_device_properties(torch.device(device))
        name = props.name
        bf16_ok = capability_has_bf16(props.major)
        logger.info(
            "GPU: %s, %.1f GiB, compute capability %d.%d; torch %s built for CUDA %s",
            name,
            props.total_memory / 2**30,
            props.major,
            props.minor,
            torch.__version__,
            torch.version.cuda,
        )
    else:
        name, bf16_ok = "cpu", False
    if precision == "bf16" and not bf16_ok:
        raise ConfigError(f"precision='bf16': {name} has no bf16 support; use precision=auto or fp32")
    autocast = precision == "bf16" or (precision == "auto" and bf16_ok)
    cuda, compiler = device.startswith("cuda"), c_compiler()
    cc = os.environ.get("CC")
    no_compiler = (
        "none was found (gcc, clang); install gcc" if cc is None else f"$CC={cc!r} is not one; fix or unset it"
    )
    if compile_sae and cuda and compiler is None:
        raise ConfigError(
            "compile_sae=true: torch.compile on a CUDA device needs a C compiler (Triton builds its kernel launchers "
            f"with one) and {no_compiler}, or set compile_sae=false"
        )
    if compile_sae and not cuda and shutil.which(os.environ.get("CXX") or "g++") is None:
        raise ConfigError(
            "compile_sae=true: torch.compile on CPU needs a C++ compiler and none was found ($CXX, g++); install "
            "g++, or set compile_sae=false"
        )
    if compile_sae is None:
        compile_sae = cuda and compiler is not None
        if cuda and not compile_sae:
            logger.warning("compile_sae: off: Triton needs a C compiler and %s", no_compiler)
    return Runtime(device=device, device_name=name, autocast=autocast, compile_sae=compile_sae)


def load_model(
    model_name: str,
    device: str,
    channel: Path | None = None,
    fused: bool = False,
    source: str | None = None,
    tokenizer: object = None,
) -> HookedTransformer:
    """The model through SAE-Lens's own loader (TransformerLens ``from_pretrained_no_processing``), with the fused
    kernels of container_src/fused.py when ``fused``. ``source`` (from :func:`container_src.weights.weights_source`,
    already checked against ``model_name``): other weights of that architecture, loaded from their own folder with
    ``tokenizer``.

    The same call serves the hub and a hub-cache channel; the caller sets the HF environment before import.
    """
    from sae_lens.load_model import load_model as sae_lens_load_model

    from container_src.weights import load_hooked

    try:
        if source is not None:
            model = load_hooked(source, tokenizer, device)
        else:
            model = sae_lens_load_model("HookedTransformer", model_name, device=device)
    except ConfigError:
        raise
    except Exception as exc:  # missing files, corrupt weights, no network: each a problem with the input
        reason = f"{type(exc).__name__}: {exc}"
        if channel is not None:
            raise ConfigError(
                f"channel model: could not load {model_name!r} from {channel} ({reason}). Check that the snapshot "
                "holds config.json, model.safetensors and the tokenizer files, as the hub has them."
            ) from None
        raise ConfigError(
            f"model_name={model_name!r}: could not load from the Hugging Face hub ({reason}). Without network "
            "access, pass the weights as channel `model` in hub-cache layout."
        ) from None
    if fused:
        from container_src.fused import fuse_model

        fuse_model(model)  # type: ignore[arg-type]
    return model  # type: ignore[return-value]


def weights_fingerprint(model: HookedTransformer) -> str:
    """sha256 of the model's parameters (names, shapes, dtypes and bytes, read on the CPU). Part of a training run's
    identity: other weights under the same ``model_name`` (another ``model`` channel) give other activations."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_context(model: HookedTransformer, context_size: int) -> None:
    if context_size > model.cfg.n_ctx:
        raise ConfigError(f"context_size={context_size}: the model's context is only {model.cfg.n_ctx} tokens")


def check_hook(model: HookedTransformer, hook_name: str) -> None:
    """Fail with the valid hook names of the same kind when the model has no ``hook_name``."""
    if hook_name in model.hook_dict:
        return
    names = list(model.hook_dict)
    kind = re.sub(r"\.\d+\.", ".{N}.", hook_name)
    same_kind = [n for n in names if re.sub(r"\.\d+\.", ".{N}.", n) == kind]
    if same_kind:
        listing = f"hooks of that kind in this model: {', '.join(same_kind)}"
    else:
        close = difflib.get_close_matches(hook_name, names, n=6, cutoff=0.5)
        layer0 = [n for n in names if n.startswith("blocks.0.")]
        listing = "closest hooks: " + ", ".join(close or layer0)
    raise ConfigError(f"hook_name={hook_name!r}: the model has no such hook; {listing}")


def hook_width(model: HookedTransformer, hook_name: str) -> int:
    """d_in: the width of the activations at ``hook_name``, measured with one short forward pass."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    check_hook(model, hook_name)
    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=[hook_name], stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(hook_name)
        )
    acts = cache[hook_name]
    # Attention heads (z, q, k, v) are [batch, pos, head, d_head]; SAE-Lens flattens the trailing dimensions.
    width = 1
    for dim in acts.shape[2:]:
        width *= dim
    return width
