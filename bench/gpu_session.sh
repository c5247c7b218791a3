#!/usr/bin/env bash
# Every GPU check this project has, in one short run on a lent H100/H200 (the device tool):
# the CUDA-only tests, then the GPU benches, in order of what matters most. Each step has its own
# time box, and its results are packed into $OUT after it ends, so a step that runs out of time
# loses only itself.
#
#   bash bench/gpu_session.sh                   # every step; OUT=folder for results (default bench/results/gpu-session)
#   bash bench/gpu_session.sh tests gpu_tsne    # only these steps
#   bash bench/gpu_session.sh survey            # issue 24 in one 10-minute run (~570 s of time boxes): the matmul
#                                               # baseline, the t-SNE table (17,736 first/warm, 1M; 10M last), the
#                                               # 200,000-galaxy pipeline (extract -> t-SNE -> outliers) per stage
#   bash bench/gpu_session.sh --smoke           # the survey steps at tiny sizes, on the CPU when there is no GPU
#                                               # (PYTHON=interpreter, default python3; tests/test_gpu_survey.py)
#
# The device's python3 lacks openTSNE (carry its wheel in .whl/; see bench/README or the device
# notes) and streamlit/datasets/umap/ray, which nothing here imports.
set -u
SMOKE=
if [ "${1:-}" = "--smoke" ]; then SMOKE=--smoke; shift; set -- ${*:-survey}; fi
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/session.log"
LOGS=$(mktemp -d)  # each step's whole output
START=$(date +%s)

pack() {  # results and logs so far -> one archive (the device returns at most 8 files)
    cp -f /tmp/pretrain-gpu/training_log.json "$LOGS/pretrain-gpu-training_log.json" 2>/dev/null || true
    tar czf "$OUT/results.tgz" --exclude gpu-session bench/results -C "$LOGS" . 2>/dev/null
}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s)" | tee -a "$LOG"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOGS/$name.log" | tail -n 40 >>"$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
    pack
}

if [ -z "$SMOKE" ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -z "$SMOKE" ] && { nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  python3 -c "import openTSNE; print('openTSNE', openTSNE.__version__)"; python3 -c "import timm, torchvision; print('timm', timm.__version__, 'torchvision', torchvision.__version__)"; } 2>&1 | tee -a "$LOG"

STEPS=${*:-tests gpu_tsne pretrain compile_heads layers}
STEPS=${STEPS//survey/matmul survey_tsne pipeline tsne10m}
for s in $STEPS; do case $s in
# 1. the tests that only run where there is a GPU (or timm with a matching torchvision)
tests) step tests 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 \
    "tests/test_finetune.py::test_finetune_on_gpu_bf16" tests/test_pretrain.py tests/test_timm.py \
    "tests/test_tsne_torch.py::test_projection_picks_the_implementation" \
    "tests/test_tsne_torch.py::test_cuda_graph_layout_matches_plain_launches" ;;
timm) step timm 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 tests/test_timm.py ;;
# 2. issue 13: the torch FFT t-SNE on the GPU at 17,736 / 200,000 / 1,000,000 points
gpu_tsne) step gpu_tsne 220 python3 bench/gpu_tsne.py --budget 150 --profile-layout 17736 ;;
# 3. issue 10: the demo model's recorded pretraining command, on the GPU (bf16)
pretrain) step pretrain 95 python3 -m core pretrain --dataset 'synthetic:galaxy10?n=4000&size=64&seed=2026' \
    --config nano --out /tmp/pretrain-gpu --epochs 6 --batch-size 32 --seed 0 ;;
# 4. extract --compile with a classification head, and --layers all, on a DINOv2-base
compile_heads) step compile_heads 75 python3 bench/compile_heads.py ;;
layers) step layers 50 python3 bench/layers.py --model dinov2-b --device cuda --n 8192 ;;
# 5. issue 24, one stage each (bench/gpu_survey.py; each prints JSON lines as it goes and appends them to
#    bench/results/gpu-survey-<device>.json): the matmul rate first (the ratios' denominator), 10M last
matmul) step matmul 30 "$PY" bench/gpu_survey.py matmul $SMOKE ;;
survey_tsne) step survey_tsne 120 "$PY" bench/gpu_survey.py tsne $SMOKE ;;
pipeline) step pipeline 170 "$PY" bench/gpu_survey.py pipeline $SMOKE ;;
tsne10m) step tsne10m 250 "$PY" bench/gpu_survey.py tsne10m $SMOKE ;;
*) echo "unknown step $s" | tee -a "$LOG" ;;
esac; done
echo "done in $(( $(date +%s) - START ))s" | tee -a "$LOG"
pack
