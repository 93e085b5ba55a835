#!/usr/bin/env bash
# The CUDA path on a real GPU, in one device call (under 8 minutes on one H200).
#
# 1. Here, once (no GPU needed; about 6 MB into benchmarks/out/gpu/, which git ignores):
#        bash benchmarks/gpu_check.sh prepare [MONUSEG_DIR]     # default ../shared/datasets/MoNuSeg
#    MoNuSeg's train/val images and masks as the 224-px PNGs the paper protocol trains on, and
#    their texts' token features from the default encoder (neither the encoder's package, 88 MB,
#    nor openpyxl is on the GPU machine; MoNuSeg's TIFFs are 54 MB).
# 2. On the GPU machine, with the device tool:
#        run(command="bash benchmarks/gpu_check.sh run", carry=["benchmarks/out/gpu"],
#            timeout_s=600)
#    prints and writes to $OUT (else benchmarks/out): gpu_check.log and gpu_check.json with
#    - the CUDA-marked tests (pytest -m cuda over the test files that have such tests),
#    - a forward and a training step of lvit_t and lvit_s at batch 16, 224 px, in fp32, mixed
#      precision and mixed precision + channels_last (median ms, images/s),
#    - lvit_t on MoNuSeg (paper protocol: batch 2, Adam 1e-3, 200 epochs, patience 50, mixed
#      precision): val Dice / IoU and minutes.
# The machine's python3 holds torch (CUDA), transformers, safetensors, pillow, tifffile, tqdm
# and pytest, which is all this needs; nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

case "${1:-run}" in
prepare)
    src=${2:-../shared/datasets/MoNuSeg}
    PY=${PYTHON:-.venv/bin/python}
    "$PY" -m benchmarks.gpu_check prepare "$src" --out benchmarks/out/gpu || exit
    du -sh benchmarks/out/gpu
    ;;
run)
    out=${OUT:-benchmarks/out}
    mkdir -p "$out"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    if [ ! -f benchmarks/out/gpu/text_features.pt ]; then
        echo "no benchmarks/out/gpu/: run 'bash benchmarks/gpu_check.sh prepare' here first" >&2
        exit 2
    fi
    start=$(date +%s)
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
        "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
        echo "== CUDA-marked tests"
        mapfile -t files < <(grep -rl --include='*.py' 'mark.cuda' tests)
        "$PY" -m pytest -q -m cuda -p no:cacheprovider "${files[@]}" || echo "!! CUDA-marked tests FAILED"
        echo "== timing ($(($(date +%s) - start)) s so far)"
        "$PY" -m benchmarks.gpu_check timing --out "$out/gpu_check.json" || echo "!! timing FAILED"
        echo "== MoNuSeg ($(($(date +%s) - start)) s so far)"
        "$PY" -m benchmarks.gpu_check monuseg --out "$out/gpu_check.json" || echo "!! MoNuSeg FAILED"
        echo "== done in $(($(date +%s) - start)) s"
    } 2>&1 | tee "$out/gpu_check.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare [MONUSEG_DIR] | run" >&2
    exit 2
    ;;
esac
