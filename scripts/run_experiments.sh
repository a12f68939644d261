#!/usr/bin/env bash
# Runs the comparisons behind the README's full-scale results (issue 4): one `ensembed compare
# --json` per (backbone set, setting), each writing results/<set>/<setting>.json.
# A result that already exists is not rerun, so the script can be stopped and restarted.
#
# Usage: scripts/run_experiments.sh STORES_DIR SET SETTING...
#   STORES_DIR  where scripts/build_cifar_stores.sh wrote the stores
#   SET         cifar10-mixed, cifar10-equal, fmnist-mixed (any STORES_DIR/SET-{train,test} pair)
#   SETTING     a name from the table below
#
# ENSEMBED_REPORT=0 skips the full report of the headline settings (only the comparison JSON).
#
# The settings (flags over the paper's defaults, METHOD.md):
#   paper        the paper's protocol exactly
#   lazy         --bank lazy (per-row Adam state: only the batch's rows move)
#   lr1e-3       --lr 1e-3
#   zero-bias    --last-bias zero
#   no-final-relu --final-relu false
#   epochs100    --epochs 100 (twice the optimiser steps)
#   warmup0      --warmup 0 (the bank learns from the first epoch)
#   lr-bank1e-2  --lr-bank 1e-2 (a faster bank than MLPs)
#   depth1, depth3, depth4   --depth N (paper Fig. 10)
#   wd1e-5       --weight-decay 1e-5
#   batch128, batch512   --batch N with the learning rate scaled linearly (3e-4 x N/256)
#   seedN        --seed N (another initialisation and batch order; baselines do not change)
#   ensembed     what `--preset ensembed` selects (see README)
#   ensembed-<setting>: the same change over `--preset ensembed` (e.g. ensembed-epochs100)
set -euo pipefail
cd "$(dirname "$0")/.."
STORES=$1; SET=$2; shift 2
OUT=results/$SET
mkdir -p "$OUT"
BIN=${ENSEMBED_BIN:-target/release/ensembed}
flags_of() {
  case $1 in
    paper) echo "--preset paper" ;;
    ensembed) echo "--preset ensembed" ;;
    lazy) echo "--preset paper --bank lazy" ;;
    dense) echo "--preset paper --bank dense" ;;
    lr1e-3) echo "--preset paper --lr 1e-3" ;;
    zero-bias) echo "--preset paper --last-bias zero" ;;
    no-final-relu) echo "--preset paper --final-relu false" ;;
    epochs100) echo "--preset paper --epochs 100" ;;
    warmup0) echo "--preset paper --warmup 0" ;;
    lr-bank1e-2) echo "--preset paper --lr-bank 1e-2" ;;
    depth[0-9]) echo "--preset paper --depth ${1#depth}" ;;
    wd1e-5) echo "--preset paper --weight-decay 1e-5" ;;
    batch128) echo "--preset paper --batch 128 --lr 1.5e-4" ;;
    batch512) echo "--preset paper --batch 512 --lr 6e-4" ;;
    seed[0-9]) echo "--preset paper --seed ${1#seed}" ;;
    ensembed-*) echo "$(flags_of "${1#ensembed-}" | sed 's/--preset paper/--preset ensembed/')" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
for setting in "$@"; do
  json=$OUT/$setting.json
  if [ -e "$json" ]; then echo "have $json"; continue; fi
  flags=$(flags_of "$setting")
  echo "== $SET / $setting: ensembed compare $flags"
  start=$(date +%s)
  train=$STORES/$SET-train test=$STORES/$SET-test
  if { [ "$setting" = paper ] || [ "$setting" = ensembed ]; } && [ "${ENSEMBED_REPORT:-1}" != 0 ]; then
    # The two headline settings also get the full report (figures, diagnostics); its
    # comparison part is the same JSON `compare --json` prints.
    # shellcheck disable=SC2086
    "$BIN" report --train "$train" --test "$test" --k 10,20,100,200 $flags -q \
      --out "$OUT/$setting-report" --overwrite
    python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["comparison"], open(sys.argv[2], "w"), indent=1)' \
      "$OUT/$setting-report/report.json" "$json.tmp"
  else
    # shellcheck disable=SC2086
    "$BIN" compare --train "$train" --test "$test" --k 10,20,100,200 $flags --json -q > "$json.tmp"
  fi
  mv "$json.tmp" "$json"
  echo "   done in $(( $(date +%s) - start )) s"
done
