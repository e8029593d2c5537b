#!/bin/sh
# The dependency install, one recipe for the image (Dockerfile) and for every venv (make install, so CI): CI thus
# proves that the lock the image installs from installs. torch first, taking its own dependencies at the locked
# versions (the CPU build on a workstation; the CUDA build in the image, with its nvidia-*, cuda-* and triton wheels
# at docker/cuda.lock's versions), with setuptools at docker/cuda.lock's version; then the lock files without
# resolution. Two locked packages publish no wheel (py2store, transformers-stream-generator: sdists built with
# setuptools), so that step runs without build isolation: they build with that pinned setuptools, not with whatever
# pip would fetch. torchvision/torchaudio must be absent: next to this torch they break transformer_lens.
#   usage: docker/install.sh PYTHON LOCK [LOCK ...]     (docker/container.lock first)
set -eu
py=$1
shift
"$py" -m pip install --quiet -c docker/container.lock -c docker/cuda.lock torch==2.13.0 setuptools
locks=""
for lock in "$@"; do locks="$locks -r $lock"; done
# shellcheck disable=SC2086 # one -r per lock file
"$py" -m pip install --quiet --no-deps --no-build-isolation $locks
"$py" -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','torchaudio') if u.find_spec(m)]; sys.exit(f'remove {bad}: they break transformer_lens next to this torch' if bad else 0)"
