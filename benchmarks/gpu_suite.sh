#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in ONE run that fits a 10-minute device call.
#
#   bash benchmarks/gpu_suite.sh OUTDIR            # on the GPU machine (see benchmarks/README.md)
#   SMOKE=1 bash benchmarks/gpu_suite.sh /tmp/out  # tiny settings: checks the script on a CPU
#
# Each step runs with its own time limit, cut to what is left of BUDGET seconds (default 480), in the
# order of what matters most: the synthesis engine against PyTorch (issue 13: >= 3x), the batch of 64
# class visualisations against 64 sequential runs (>= 8x), jaxviz against captum (issue 12: 2x), fast
# style transfer (issue 15: 2x), parity with torchvision at 224-512 px, then DeepDream octaves,
# attribution throughput, style transfer and the generator prior. Everything is written to
# OUTDIR/gpu_suite.log (and echoed); a step that runs out of time says so and the next one starts.
# Needs: jax with a GPU backend, torch + torchvision, flax, optax, orbax-checkpoint, scikit-image,
# captum (pure Python; carried as a wheel where it is not installed). jaxviz itself is read from this
# checkout through PYTHONPATH.
set -u
out=${1:?usage: gpu_suite.sh OUTDIR}
mkdir -p "$out"
log="$out/gpu_suite.log"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# torch and jax share the device in one process: jax must not take 75% of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
budget=${BUDGET:-480}
start=$(date +%s)

step() {  # step CAP_SECONDS TITLE -- command...
    local cap=$1 title=$2
    shift 3
    local left=$((budget - ($(date +%s) - start)))
    if [ "$left" -lt 20 ]; then
        echo "### $title: SKIPPED (budget spent)" | tee -a "$log"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "### $title (limit ${cap} s): $*" | tee -a "$log"
    local t0=$(date +%s)
    timeout "$cap" "$@" 2>&1 | grep --line-buffered -v -E "^(WARNING|W0000|I0000)" | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "### $title: rc $rc, $(( $(date +%s) - t0 )) s" | tee -a "$log"
}

{
    echo "### $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -m), $(nproc) CPUs, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $py -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$log"

if [ "${SMOKE:-0}" = 1 ]; then
    step 300 "engine vs torch" -- $py benchmarks/synthesis_engine_bench.py --sizes 32 --steps 2
    step 300 "64 class visualisations" -- $py benchmarks/features_bench.py --size 32 --batch 2 --steps 2
    step 300 "captum" -- $py benchmarks/captum_bench.py --sizes 32 --batches 1 --repeats 1 --methods saliency,smoothgrad
    step 300 "fast style" -- $py benchmarks/faststyle_bench.py --sizes 32 --infer-batch 1 --train-size 32 --train-batch 1 --repeats 1
    step 300 "parity" -- $py benchmarks/gpu_parity.py --archs alexnet --sizes 64 --batch 1
    step 300 "deepdream" -- $py benchmarks/dream_bench.py --size 48 --octaves 2 --steps 2 --loops python
    step 300 "attribution" -- $py benchmarks/attribution_bench.py --size 32 --batch-sizes 1 --repeats 1 --occlusion-size 16 --occlusion-stride 16
    step 300 "style" -- $py benchmarks/style_bench.py --sizes 32 --steps 2 --repeats 1 --batch 2 --batch-size 32 --memory-sizes 32
    step 300 "generator" -- $py benchmarks/generator_bench.py --batch 2 --steps 2 --repeats 1
else
    step 90 "engine vs torch" -- $py benchmarks/synthesis_engine_bench.py --sizes 128,224 --batch 1 --steps 50
    step 100 "64 class visualisations" -- $py benchmarks/features_bench.py --size 128 --batch 64 --steps 32
    step 70 "captum" -- $py benchmarks/captum_bench.py --sizes 64,224 --batches 64,16 --repeats 5
    step 60 "fast style" -- $py benchmarks/faststyle_bench.py --infer-batch 16,4 --train-batch 16 --repeats 5
    step 60 "parity" -- $py benchmarks/gpu_parity.py --archs vgg16,alexnet --sizes 224,512
    step 40 "deepdream" -- $py benchmarks/dream_bench.py
    step 50 "attribution" -- $py benchmarks/attribution_bench.py --batch-sizes 1,16,64 --repeats 5
    step 60 "style" -- $py benchmarks/style_bench.py --sizes 512 --steps 10 --repeats 2 --memory-sizes 512 1024 2048
    step 30 "generator" -- $py benchmarks/generator_bench.py --batch 10,100 --steps 50
fi
echo "### done in $(( $(date +%s) - start )) s" | tee -a "$log"
