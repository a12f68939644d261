#!/usr/bin/env bash
# Runs the comparisons behind the README's full-scale results (issue 4): one `ensembed compare
# --json` per (backbone set, setting), each writing results/<dataset>-<set>/<setting>.json.
# A result that already exists is not rerun, so the script can be stopped and restarted.
#
# Usage: scripts/run_experiments.sh STORES_DIR SET SETTING...
#   STORES_DIR  where scripts/build_cifar_stores.sh wrote the stores
#   SET         mixed | equal (or any STORES_DIR/cifar10-SET-{train,test} pair)
#   SETTING     a name from the table below
#
# The settings (flags over the paper's defaults, METHOD.md):
#   paper        the paper's protocol exactly
#   lazy         --bank lazy (per-row Adam state: only the batch's rows move)
#   lr1e-3       --lr 1e-3
#   zero-bias    --last-bias zero
#   no-final-relu --final-relu false
#   ensembed     what `--preset ensembed` selects (see README)
set -euo pipefail
cd "$(dirname "$0")/.."
STORES=$1; SET=$2; shift 2
OUT=results/cifar10-$SET
mkdir -p "$OUT"
BIN=target/release/ensembed
flags_of() {
  case $1 in
    paper) echo "--preset paper" ;;
    ensembed) echo "--preset ensembed" ;;
    lazy) echo "--preset paper --bank lazy" ;;
    lr1e-3) echo "--preset paper --lr 1e-3" ;;
    zero-bias) echo "--preset paper --last-bias zero" ;;
    no-final-relu) echo "--preset paper --final-relu false" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
for setting in "$@"; do
  json=$OUT/$setting.json
  if [ -e "$json" ]; then echo "have $json"; continue; fi
  flags=$(flags_of "$setting")
  echo "== $SET / $setting: ensembed compare $flags"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$BIN" compare --train "$STORES/cifar10-$SET-train" --test "$STORES/cifar10-$SET-test" \
    --k 10,20,100,200 $flags --json -q > "$json.tmp"
  mv "$json.tmp" "$json"
  echo "   done in $(( $(date +%s) - start )) s"
done
