#!/usr/bin/env bash
# One GPU session's measurements, in one call (about 5-8 minutes on an H100): today's defaults against bare SAE-Lens,
# SAE-Lens with its best settings and sparsify (one bench command: same process, same device, same stand-in model and
# stories), ours under the profiler, and the multi-SAE path where this checkout has it. Every figure goes to JSON
# under the folder given; docs/BENCHMARKS.md says how to read and record them.
#
#   bash docker/gpu-bench.sh OUT_DIR [PYTHON]      # from the repository root, with the image's packages installed
#
# BENCH_FLAGS: more bench flags for every step (a quick check on CPU: "--model_shape tiny --preset smoke --steps 5
# --warmup_steps 1"). MULTI_SAE_FLAGS: the flags that turn on the multi-SAE path; the optional step 2 runs only with
# them. Each step has a time limit of its own, so one that hangs leaves the others' files; the script's status is the
# worst step's.
set -uo pipefail

out=${1:?usage: bash docker/gpu-bench.sh OUT_DIR [PYTHON]}
py=${2:-python}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
# bench's failure file (if any) goes under OUT_DIR too, not into /opt/ml
export SAGEMAKER_BASE_DIR=${SAGEMAKER_BASE_DIR:-$out/opt_ml}
status=0

step() {  # step NAME SECONDS COMMAND...: the command's output in OUT_DIR/NAME.log, its status noted
	local name=$1 limit=$2
	shift 2
	echo "== $name (at most ${limit}s): $*"
	local start=$SECONDS
	timeout "$limit" "$@" >"$out/$name.log" 2>&1
	local rc=$?
	echo "   status $rc after $((SECONDS - start))s"
	[ "$rc" -ne 0 ] && status=$rc
	return 0
}

# What ran where: the GPU, its driver and the packages that set the speed.
{
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
	"$py" -c 'import torch, sae_lens, sparsify, transformer_lens as tl, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda); print("sae_lens", sae_lens.__version__, "sparsify", sparsify.__version__, "transformer_lens", m.version("transformer_lens"))'
	nproc
	git rev-parse HEAD
	date -u +%Y-%m-%dT%H:%M:%SZ
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# 1. Today's defaults (seed configuration, 20 warm-up + 200 steps) with bare, tuned SAE-Lens and sparsify beside
#    them, and ours once more under the profiler (its operator table, by device time). Peak GPU memory per pipeline
#    is in the JSON.
# shellcheck disable=SC2086  # BENCH_FLAGS and MULTI_SAE_FLAGS are lists of flags
step bench 420 "$py" -m container_src bench ${BENCH_FLAGS:-} --json "$out/bench.json" --profile "$out/profile.txt"

# 2. OPTIONAL, only with MULTI_SAE_FLAGS: the multi-SAE path (its key is that path's; bench's peers off, since step 1
#    measured them). Compare its tokens/s, per SAE trained, with step 1's ours.
if [ -n "${MULTI_SAE_FLAGS:-}" ]; then
	# shellcheck disable=SC2086
	step bench-multi 180 "$py" -m container_src bench ${BENCH_FLAGS:-} --bare false --tuned false --sparsify false \
		$MULTI_SAE_FLAGS --json "$out/bench-multi.json"
else
	echo "== bench-multi: skipped (optional: set MULTI_SAE_FLAGS to the multi-SAE path's flags)"
fi

# The figures to record, from the JSON and the profile's top rows.
"$py" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for name in ("bench.json", "bench-multi.json"):
    if not (out / name).exists():
        continue
    f = json.loads((out / name).read_text())
    print(f"{name}: {f['device_name']}, {f['precision']}, compile_sae={f['compile_sae']}, {f['date']}")
    for key in ("ours", "bare", "tuned", "sparsify"):
        if f.get(key):
            s = f[key]
            print(f"  {key:9} {s['tokens_per_s']:>12,.0f} tokens/s  {s['steps']} timed steps  "
                  f"peak memory ({f['peak_memory_kind']}) {s['peak_memory_bytes'] / 2**30:.2f} GiB")
    for key in ("bare", "tuned", "sparsify"):
        if f.get(f"ratio_ours_to_{key}") is not None:
            print(f"  ours / {key}: {f[f'ratio_ours_to_{key}']}")
    print(f"  SAE step alone: ours {f['sae_alone']['tokens_per_s']:,.0f}, SAE-Lens's {f['sae_lens_step_alone']['tokens_per_s']:,.0f}")
profile = out / "profile.txt"
if profile.exists():
    print("profile, top rows:")
    print("\n".join(profile.read_text().splitlines()[:22]))
EOF
exit "$status"
