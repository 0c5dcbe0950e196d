#!/usr/bin/env bash
# GPU evidence in one run (< 5 min on a CUDA machine): the predict benchmark at 8192² with the
# shipped MFAFNet-S (fp32 and AMP, PyTorch and the ONNX Runtime CUDA provider, 1 and 4 reader
# threads), the null engine (the machinery's own ceiling), the row-band merger on the GPU
# against the numpy one (torch AMP, and the null engine), the device-merger equivalence tests
# on CUDA, the default thread split, the scene-statistics pre-pass, MONAI side by side
# (benchmarks/vs_monai.py), one AMP training epoch, and the training data path
# (benchmarks/train_bench.py: AMP steps model-only vs end-to-end with 4 and 8 loader workers).
# Issue 26's fixes: the precision `auto` picks per GPU and why (bf16 only where native), model_seconds (CUDA events) against the
# host-return and synchronised times of the same calls, and with two or more GPUs the device
# of each torchrun rank for --device cuda (and that no rank makes a CUDA context on another
# rank's GPU).
# Prints one JSON object per line on stdout; progress on stderr.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repo root
#   SIZE=256 DEVICE=cpu TRAIN_N=4 TRAIN_SIZE=64 bash benchmarks/gpu_check.sh  # CPU smoke test
set -euo pipefail

SIZE=${SIZE:-8192}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-mfafnet-s-ombria-water}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mfaf-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MFAF_CACHE_DIR="${MFAF_CACHE_DIR:-$WORK/cache}"
TRAIN_N=${TRAIN_N:-256}        # generated training patches
TRAIN_SIZE=${TRAIN_SIZE:-256}  # their side (and the training tile)
cd "$ROOT"

note() { echo "[gpu_check $(date +%H:%M:%S)] $*" >&2; }
bench() {  # label, then predict_bench arguments
    local label=$1
    shift
    note "$label"
    local out
    if out=$("$PY" benchmarks/predict_bench.py --size "$SIZE" --workdir "$WORK/data" "$@" | tail -1); then
        echo "{\"check\": \"$label\", \"result\": $out}"
    else
        echo "{\"check\": \"$label\", \"error\": \"exit $?\"}"
    fi
}

note "machine"
"$PY" - <<'EOF'
import json, os, torch
info = {"check": "machine", "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_cores": len(os.sched_getaffinity(0))}
try:
    import onnxruntime as ort
    info["onnxruntime"] = ort.__version__
    info["ort_providers"] = ort.get_available_providers()
except ImportError:
    info["onnxruntime"] = None
print(json.dumps(info))
EOF

checked() {  # label, then a command printing one JSON line
    local label=$1
    shift
    note "$label"
    "$@" || echo "{\"check\": \"$label\", \"error\": \"exit $?\"}"
}
CLOCK_SIZE=${CLOCK_SIZE:-$((SIZE < 2048 ? SIZE : 2048))}
checked precision-auto "$PY" benchmarks/gpu_paths_check.py precision --device "$DEVICE"
checked model-seconds-clock "$PY" benchmarks/gpu_paths_check.py clock --device "$DEVICE" \
    --model "$MODEL" --size "$CLOCK_SIZE" --workdir "$WORK/clock"

ngpu=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$DEVICE" != cpu ] && [ "$ngpu" -ge 2 ]; then
    torchrun2=("$PY" -m torch.distributed.run --standalone --nproc-per-node 2)
    checked torchrun-rank-device "${torchrun2[@]}" benchmarks/gpu_paths_check.py rank \
        --device cuda --model "$MODEL"
    note "torchrun predict --batch --device cuda: each rank's scenes on its own GPU"
    "$PY" - "$WORK/ranks" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from predict_bench import generate_pair
folder = Path(sys.argv[1])
folder.mkdir(parents=True)
opt, sar = generate_pair(folder, 512)
rows = [f"scene-{i},{opt},{sar},\"1,2,3\",{folder}/map-{i}.tif" for i in range(4)]
(folder / "scenes.csv").write_text("scene,optical,sar,optical_bands,output\n" + "\n".join(rows) + "\n")
EOF
    if "${torchrun2[@]}" -m mfaf_cli predict --batch "$WORK/ranks/scenes.csv" --model "$MODEL" \
        --device cuda --engine torch --json -q > "$WORK/ranks/batch.jsonl"; then rc=0; else rc=$?; fi
    "$PY" - "$WORK/ranks/batch.jsonl" "$rc" <<'EOF'
import json, sys
recs = [json.loads(x) for x in open(sys.argv[1]) if x.startswith("{")]
got = {r["scene"]: r.get("device", r.get("error")) for r in recs}
want = {f"scene-{i}": f"cuda:{i % 2}" for i in range(4)}  # rank r takes scenes r, r + 2
print(json.dumps({"check": "torchrun-batch-devices", "rc": int(sys.argv[2]),
                  "ok": got == want, "devices": got, "expected": want}))
EOF
else
    echo "{\"check\": \"torchrun-cuda-mapping\", \"skipped\": \"needs 2 GPUs, found $ngpu (device $DEVICE)\"}"
fi

common=(--model "$MODEL" --device "$DEVICE" --tile 256 --batch-size 16)
bench torch-fp32-readers1 "${common[@]}" --engine torch --precision fp32 --read-threads 1
bench torch-fp32-readers4 "${common[@]}" --engine torch --precision fp32 --read-threads 4
bench torch-amp-readers4 "${common[@]}" --engine torch --precision auto --read-threads 4
bench onnx-cuda-readers4 "${common[@]}" --engine onnx --read-threads 4
bench null-readers1 --model "$MODEL" --engine null --read-threads 1
bench null-readers4 --model "$MODEL" --engine null --read-threads 4  # a column part each
# the torch runs above merge on the GPU (automatic on CUDA); the same run with the numpy merger,
# end to end only, and the null engine handing out device tensors to the device merger
bench torch-amp-readers4-numpy-merger "${common[@]}" --engine torch --precision auto \
    --read-threads 4 --merger numpy --no-model-only
bench null-device-merger-readers4 --model "$MODEL" --engine null --device "$DEVICE" \
    --read-threads 4 --merger device
# issue 19: the default thread split (no --read-threads), the statistics pre-pass of a
# scene-percentile record, and MONAI's sliding window over the same ONNX network
bench onnx-default-split "${common[@]}" --engine onnx
bench null-scene-percentile --model "$MODEL" --engine null --scene-percentile --no-model-only
note "vs MONAI at $SIZE (needs: pip install monai --no-deps)"
if out=$("$PY" benchmarks/vs_monai.py --sizes "$SIZE" --workdir "$WORK/data" | tail -1); then
    echo "{\"check\": \"vs-monai\", \"result\": $out}"
else
    echo "{\"check\": \"vs-monai\", \"error\": \"exit $?\"}"
fi

note "device-merger equivalence tests (CUDA cases run only where CUDA is)"
if tests_out=$("$PY" -m pytest -q -p no:cacheprovider tests/test_device_merger.py 2>&1); then rc=0; else rc=$?; fi
[ "$rc" = 0 ] || printf '%s\n' "$tests_out" >&2
summary=$(printf '%s\n' "$tests_out" | tail -1 | tr -d '"\\')
echo "{\"check\": \"device-merger-tests\", \"rc\": $rc, \"summary\": \"$summary\"}"

note "the float32-under-autocast tests of issue 26 (CUDA cases run only where CUDA is)"
if tests_out=$("$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py -k autocast 2>&1); then rc=0; else rc=$?; fi
[ "$rc" = 0 ] || printf '%s\n' "$tests_out" >&2
summary=$(printf '%s\n' "$tests_out" | tail -1 | tr -d '"\\')
echo "{\"check\": \"autocast-dtype-tests\", \"rc\": $rc, \"summary\": \"$summary\"}"

note "one AMP training epoch (generated OMBRIA-layout patches)"
"$PY" - "$WORK/ombria" "$TRAIN_N" "$TRAIN_SIZE" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from dataset_builders import make_ombria
make_ombria(Path(sys.argv[1]), n_train=int(sys.argv[2]), n_test=8, size=int(sys.argv[3]))
EOF
now() { "$PY" -c 'import time; print(time.time())'; }
t0=$(now)
if "$PY" -m mfaf_cli train --dataset ombria --data-root "$WORK/ombria" --model mfafnet-s \
    --epochs 1 --batch-size 16 --tile "$TRAIN_SIZE" --amp --device "$DEVICE" -o "$WORK/run" -q >&2; then
    secs=$("$PY" -c "print(round($(now) - $t0, 2))")
    echo "{\"check\": \"train-amp-epoch\", \"samples\": $TRAIN_N, \"seconds\": $secs}"
else
    echo "{\"check\": \"train-amp-epoch\", \"error\": \"exit $?\"}"
fi
note "training data path: AMP steps, model only vs end to end at 4 and 8 workers (issue 23)"
TB_SIZE=${TB_SIZE:-4096}
if out=$("$PY" benchmarks/train_bench.py --size "$TB_SIZE" --workdir "$WORK/train_bench" \
    --device "$DEVICE" --amp --workers 0,4,8 --step-workers 4,8 | tail -1); then
    echo "{\"check\": \"train-data-path\", \"result\": $out}"
else
    echo "{\"check\": \"train-data-path\", \"error\": \"exit $?\"}"
fi
note "done"
