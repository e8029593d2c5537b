# The one image: SageMaker runs `docker run IMAGE train`; docker compose runs the same image locally.
# The base is an exact tag; `make pin-base` resolves it to a digest and writes it here (it needs registry access).
# Python 3.11 because the locks were resolved for it; PyPI's torch wheel brings the CUDA runtime, so no CUDA base.
# NVIDIA's CUDA 13.0 base image is used only for its forward-compatibility libraries (package cuda-compat-13-0: the
# user-space driver of R580), which let CUDA 13.0 run on a host with an older data-center driver (docker/train
# enables them only there; docs/container.md has the drivers and the sources). Its tag is the CUDA 13.0 update of
# docker/cuda.lock's nvidia-cuda-runtime (13.0.96: 13.0 Update 2).
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS cuda-compat

FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/var/cache/huggingface \
    PYTHONPATH=/opt/program

WORKDIR /opt/program

# A C compiler and the C library's headers: Triton builds its kernel launchers with them when torch.compile runs on
# a GPU, and train compiles the SAE there by default (compile_sae). gcc is bookworm's (its version never changes
# within the release). The headers come at the mirror's current bookworm version and apt raises the base image's C
# library to match them: the mirror keeps only the newest point release, so pinning them to the base image's own
# version fails the build as soon as Debian updates glibc (hence hadolint's DL3008 is off for this step). The build
# log lists what was installed.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev \
    && dpkg-query -W gcc gcc-12 libc6 libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, from the lock only, so a code change rebuilds none of these layers. The same script is what
# `make install` (and so CI) runs; nothing is installed when a container starts. The lock is resolved on a CPU
# machine, so torch's CUDA wheels (nvidia-*, cuda-*, triton: CUDA 13.0) are pinned apart, in docker/cuda.lock,
# resolved from PyPI for this platform by docker/relock.sh (some are ranges in torch's metadata). CI installs the
# CPU build through the same script and so exercises those constraints only where the CPU build shares them.
COPY docker/install.sh docker/container.lock docker/cuda.lock docker/
RUN sh docker/install.sh python docker/container.lock

# The libraries alone (libcuda and its JIT helpers, symlinks kept), where docker/train looks for them.
COPY --from=cuda-compat /usr/local/cuda-13.0/compat/ /usr/local/cuda/compat/

COPY container_src/ container_src/
COPY docker/train /usr/local/bin/train
# The build check: `train --help` as SageMaker calls it (the script on PATH, its line endings, the start-up GPU check
# it runs first); every library the modes import; the compatibility libraries in place and of a driver that runs
# torch's CUDA (R580+); and torch built for the CUDA release the start-up check assumes.
RUN chmod 0755 /usr/local/bin/train && train --help > /dev/null \
    && python -c "import torch, sae_lens, transformer_lens, datasets, wandb, sae_dashboard; \
import container_src.train, container_src.viz, container_src.bench, container_src.gpu as gpu; \
compat = gpu.compat_version(); \
assert compat and gpu.branch(compat) >= gpu.NATIVE_BRANCH, f'compatibility libraries: {compat}'; \
assert torch.version.cuda == gpu.CUDA, f'torch is built for CUDA {torch.version.cuda}, gpu.CUDA says {gpu.CUDA}'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'compatibility libraries', compat)"

CMD ["train"]
