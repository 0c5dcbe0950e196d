#!/usr/bin/env bash
# Training commands for the shipped optical+SAR water models (OMBRIA train split, CPU).
# Prepared by the train/evaluate engineer; the lead launches them. Run from the repo root.
#
# Data: ../shared/data/ombria (S2 RGB + S1 VV "after" PNG patches, 256x256; 156 train ids of
# which a seeded 15 % holdout (23 ids, seed 0) is the validation split; 133 train; 70 test).
# Normalisation: per-patch 2/98 % percentile stretch + train-split mean/std (stored in the
# checkpoint), identical to what `mfaf predict` applies per scene on raw Sentinel GeoTIFFs.
#
# Timing, measured with dry runs (`--epochs 1 --max-batches 2..3 --max-val-batches 0..1`,
# batch 8, tile 256, default torch threads) on this 2-core CPU *while other jobs were running*:
#   mfafnet-s : 87 s wall per training batch of 8 at load average ~3.5, 158 s at ~7;
#               ~40 s CPU time per batch; peak RSS 5.7 GB
#   unet      : 25 s wall per training batch of 8 at load ~5 (~10 s CPU time), 7 s per val batch
# One epoch = 16 training batches (133 // 8) + 3 validation batches (23 patches), so roughly
#   mfafnet-s : ~11 min (idle machine, ~40 s/batch) to ~25 min (loaded) per epoch
#   unet      : ~3-7 min per epoch
# (plus ~10 s once for the normalisation statistics). Under heavy contention torch's default
# 2 threads spin against other processes (we saw 10x slowdowns); try --threads 1 then.
# Re-measure on an idle machine with `$0 dry` before choosing --epochs.
# Weights are ~17 MB each (4.3 M params fp32).
#
# Runs can be time-boxed: add `--stop-after N` to stop after N epochs, then continue exactly
# with the same command plus `--resume runs/<name>` (optimizer, scheduler, epoch and RNG are
# restored; the LR schedule spans the full --epochs).
set -euo pipefail
DATA=../shared/data/ombria
EPOCHS_MFAF=${EPOCHS_MFAF:-12}
EPOCHS_UNET=${EPOCHS_UNET:-12}

case "${1:-}" in
dry)  # ~2 batches each, to re-measure seconds per batch (writes into /tmp)
  rm -rf /tmp/dry_mfafnet /tmp/dry_unet
  time mfaf train --dataset ombria --data-root "$DATA" --model mfafnet-s --mmd paired \
    -o /tmp/dry_mfafnet --epochs 1 --batch-size 8 --tile 256 --max-batches 2 --max-val-batches 1
  time mfaf train --dataset ombria --data-root "$DATA" --model unet \
    -o /tmp/dry_unet --epochs 1 --batch-size 8 --tile 256 --max-batches 2 --max-val-batches 1
  ;;
mfafnet)  # MFAFNet-S with the paired MMD alignment loss (lambda 0.1, ramped over 5 % of steps)
  mfaf train --dataset ombria --data-root "$DATA" --model mfafnet-s \
    --mmd paired --mmd-lambda 0.1 --mmd-warmup 0.05 \
    -o runs/mfafnet-s-ombria --epochs "$EPOCHS_MFAF" --batch-size 8 --tile 256 \
    --lr 6e-4 --weight-decay 0.01 --schedule poly --grad-clip 1.0 --seed 0 --device cpu \
    ${RESUME:+--resume runs/mfafnet-s-ombria}
  ;;
unet)  # early-fusion U-Net baseline (stacked optical+SAR channels, base width 32)
  mfaf train --dataset ombria --data-root "$DATA" --model unet \
    -o runs/unet-ombria --epochs "$EPOCHS_UNET" --batch-size 8 --tile 256 \
    --lr 6e-4 --weight-decay 0.01 --schedule poly --grad-clip 1.0 --seed 0 --device cpu \
    ${RESUME:+--resume runs/unet-ombria}
  ;;
eval)  # test-split metrics and the Sen1Floods11 chip (never trained on) for the model cards
  for run in mfafnet-s-ombria unet-ombria; do
    mfaf evaluate --model "runs/$run/best.safetensors" --dataset ombria --data-root "$DATA" \
      --split test --json --plot "runs/$run/cm_ombria_test.png" > "runs/$run/eval_ombria_test.json"
    mfaf evaluate --model "runs/$run/best.safetensors" --dataset sen1floods11 \
      --data-root ../shared/data/sen1floods11_sample --split all --json \
      --plot "runs/$run/cm_sen1floods11.png" > "runs/$run/eval_sen1floods11.json"
  done
  ;;
*)
  echo "usage: $0 dry|mfafnet|unet|eval   (env: EPOCHS_MFAF, EPOCHS_UNET, RESUME=1)" >&2
  exit 2
  ;;
esac
