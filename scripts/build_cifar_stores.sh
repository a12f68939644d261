#!/usr/bin/env bash
# Builds the full-size CIFAR-10 feature stores used by the README's full-scale table (issue 4):
# all 50,000 train + 10,000 test images of ../shared/data/cifar10 through seven real pretrained
# TFLite backbones, with `ensembed extract` (pure Rust, bit-exact with tflite-runtime).
#
#   equal width (1280-d): mnv2-imagenet, mnv2-tf2-imagenet, mnv2-inat-bird
#   mixed widths:         mnv1-025 (256-d), mnv1-050 (512), mnv1-075 (768), mnv1-100 (1024)
#
# Usage: scripts/build_cifar_stores.sh [OUT_DIR]   (default: stores/, about 1.3 GB, f16)
# Each store is written atomically; a store that already exists is skipped, so a rerun after an
# interruption redoes only what is missing. About 45 min on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-stores}
DATA=../shared/data/cifar10
CORAL=../shared/data/models/coral
mkdir -p "$OUT"
cargo build --release -q -p ensembed-cli
BIN=target/release/ensembed

mixed=(--backbone "mnv1-025=$CORAL/mobilenet_v1_0.25_128_quant.tflite"
       --backbone "mnv1-050=$CORAL/mobilenet_v1_0.5_160_quant.tflite"
       --backbone "mnv1-075=$CORAL/mobilenet_v1_0.75_192_quant.tflite"
       --backbone "mnv1-100=$CORAL/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")
equal=(--backbone "mnv2-imagenet=$CORAL/mobilenet_v2_1.0_224_quant.tflite"
       --backbone "mnv2-tf2-imagenet=$CORAL/tf2_mobilenet_v2_1.0_224_ptq.tflite"
       --backbone "mnv2-inat-bird=$CORAL/mobilenet_v2_1.0_224_inat_bird_quant.tflite")

for set in mixed equal; do
  for split in test train; do
    store="$OUT/cifar10-$set-$split"
    if [ -e "$store/manifest.json" ]; then echo "have $store"; continue; fi
    declare -n args=$set
    "$BIN" extract "${args[@]}" --images "$DATA/$split" --out "$store"
  done
done
