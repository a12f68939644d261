#!/usr/bin/env bash
# Runs the reduced-scale diagnostics behind the README's "Diagnostics on real data" (issue 5):
# the report with the non-negative and transferred variants on CIFAR-10 (four MobileNetV1
# widths, MLPs transferred from Fashion-MNIST), and the MLP depth ablation (paper Fig. 10) on
# CIFAR-10 with three MobileNetV2s. Reduced scale (500 train images per class for the report,
# 200 for the sweep) so that everything fits in about an hour on two cores; paper settings.
# Writes results/diagnostics/{report-mixed5k/report.json,depth-sweep/*.json} and the PNGs under
# docs/report-cifar10/. Work directories go to $WORK (default /tmp/ensembed-diagnostics).
#
# Usage: scripts/run_diagnostics.sh STORES_DIR
#   STORES_DIR  where scripts/build_cifar_stores.sh and build_fmnist_stores.sh wrote the stores
#               (cifar10-mixed-*, cifar10-equal10k-*, fmnist-mixed-*)
set -euo pipefail
cd "$(dirname "$0")/.."
STORES=$1
W=${WORK:-/tmp/ensembed-diagnostics}
BIN=target/release/ensembed
mkdir -p "$W" results/diagnostics docs/report-cifar10
sub() { "$BIN" subset --store "$STORES/$1" --per-class "$2" --out "$W/$3" -q --overwrite; }
sub cifar10-mixed-train 500 c5k-train
sub cifar10-mixed-test 200 c5k-test
sub fmnist-mixed-train 500 f5k-train
sub cifar10-equal10k-train 200 e2k-train
sub cifar10-equal10k-test 100 e1k-test
# The transfer donor: the same four backbones, fitted on Fashion-MNIST.
"$BIN" fit --train "$W/f5k-train" --out "$W/fmnist5k-model" --overwrite -q
"$BIN" report --train "$W/c5k-train" --test "$W/c5k-test" --k 10,20,100,200 -q \
  --nonneg-variant --transfer-model "$W/fmnist5k-model" --out "$W/report-mixed5k" --overwrite
"$BIN" sweep --train "$W/e2k-train" --test "$W/e1k-test" --param depth --values 1,2,4,8 \
  --k 10,20,100,200 -q --out "$W/depth-sweep"
# The non-negative and free starts alone: one warm-up epoch, in which the bank never moves.
for v in nonneg free; do
  flag=$([ $v = nonneg ] && echo --nonneg || true)
  # shellcheck disable=SC2086
  "$BIN" fit --train "$W/c5k-train" --out "$W/init-$v" --epochs 1 --warmup 1 $flag --overwrite -q
done
mkdir -p results/diagnostics/report-mixed5k results/diagnostics/depth-sweep results/diagnostics/init-mixed5k
for v in nonneg free; do
  "$BIN" analyze --train "$W/c5k-train" --test "$W/c5k-test" --model "$W/init-$v" --json -q > results/diagnostics/init-mixed5k/init-$v.json
done
cp "$W/report-mixed5k/report.json" results/diagnostics/report-mixed5k/
cp "$W/depth-sweep/sweep.json" results/diagnostics/depth-sweep/
cp -r "$W/depth-sweep/runs" results/diagnostics/depth-sweep/
for f in knn_top1 singular_values nn_similarity loss; do
  cp "$W/report-mixed5k/fig/$f.png" "docs/report-cifar10/${f}_mixed5k_variants.png"
done
cp "$W/depth-sweep/sweep.png" docs/report-cifar10/depth_sweep_equal2k.png
