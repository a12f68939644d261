#!/usr/bin/env bash
# Builds the CIFAR-10 feature stores behind the README's results (issue 4), from the images of
# ../shared/data/cifar10 through real pretrained TFLite backbones, with `ensembed extract` (pure
# Rust, bit-exact with tflite-runtime):
#
#   cifar10-mixed   all 50,000 train + 10,000 test images; mnv1-025 (256-d), mnv1-050 (512),
#                   mnv1-075 (768), mnv1-100 (1024): four MobileNetV1 widths
#   cifar10-equal   all 50,000 + 10,000; mnv2-imagenet, mnv2-tf2-imagenet, mnv2-inat-bird (1280-d)
#   cifar10-equal10k  the same three on the first 1,000 train + 200 test images of each class
#
# Usage: scripts/build_cifar_stores.sh OUT_DIR [SET ...]   (default sets: all three)
# Each store is written atomically; one that exists is skipped, so a rerun after an interruption
# redoes only what is missing. On two cores: mixed about 20 min, equal about 45 min, equal10k 9.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-stores}; shift || true
SETS=("${@:-cifar10-mixed cifar10-equal cifar10-equal10k}")
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

for set in ${SETS[*]}; do
  images=$DATA
  case $set in
    cifar10-mixed) backbones=("${mixed[@]}") ;;
    cifar10-equal) backbones=("${equal[@]}") ;;
    cifar10-equal10k)
      backbones=("${equal[@]}")
      images=$OUT/cifar10-10k-images
      python3 scripts/image_subset.py "$DATA/train" "$images/train" 1000
      python3 scripts/image_subset.py "$DATA/test" "$images/test" 200 ;;
    *) echo "unknown set $set" >&2; exit 2 ;;
  esac
  for split in test train; do
    store="$OUT/$set-$split"
    if [ -e "$store/manifest.json" ]; then echo "have $store"; continue; fi
    "$BIN" extract "${backbones[@]}" --images "$images/$split" --out "$store"
  done
done
