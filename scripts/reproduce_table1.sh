#!/usr/bin/env bash
# The paper's Table 1 (CIFAR-10 and SVHN: ClusTR, ClusTR+QTRADES) and its CIFAR-100 row (Table 3),
# trained and attacked with the recipes of clustr_fast.train.recipes (docs/reproduce.md):
#   scripts/reproduce_table1.sh DATA_ROOT OUT
# DATA_ROOT holds cifar-10-batches-py/, cifar-100-python/ and svhn/ (train_32x32.mat, test_32x32.mat).
# Per data set: the warm start once, each Magnet recipe from it (--init-from), then PGD-20 (with the
# eps curve, certificates and sanity checks), PGD-100, and for ClusTR+QTRADES the adaptive Magnet
# attack (100 steps, 10 restarts). Writes OUT/<recipe>/ (checkpoint, metrics, <attack>/eval_*.json)
# and OUT/table1.json, OUT/table1.md (ours beside the paper's numbers).
# Resumable: a finished training run or an attack whose JSON exists is skipped; an interrupted
# training run resumes after its last finished epoch.
# Environment: DEVICE (default cuda), DATASETS (default "cifar10 svhn cifar100"), AUTOATTACK=1 adds
# AutoAttack on every Magnet recipe (needs torchattacks), PYTHON (default python3), EXTRA_TRAIN and
# EXTRA_EVAL: flags appended to every train / eval command (e.g. a smoke run on a CPU:
# EXTRA_TRAIN="--model lip-mlp --epochs-ce 1 --epochs-magnet 1 --max-steps 1"; split at spaces, no quoting:
# write an empty value as --eps-curve=).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 DATA_ROOT OUT" >&2
  exit 2
fi
ROOT=$1 OUT=$2
DEVICE=${DEVICE:-cuda}
DATASETS=${DATASETS:-cifar10 svhn cifar100}
PY=${PYTHON:-python3}
read -r -a EXTRA_TRAIN <<< "${EXTRA_TRAIN:-}"
read -r -a EXTRA_EVAL <<< "${EXTRA_EVAL:-}"
CLI=("$PY" -m clustr_fast.cli)
mkdir -p "$OUT"
SECONDS=0
say() { echo "reproduce [$SECONDS s]: $*"; }

train() {  # train RECIPE [flags]: skipped when OUT/RECIPE/checkpoint.pt is finished
  local recipe=$1; shift
  if "$PY" -m clustr_fast.train.table finished "$OUT/$recipe/checkpoint.pt"; then
    say "$recipe: finished, skipped"
    return
  fi
  say "$recipe: training"
  "${CLI[@]}" train --recipe "$recipe" --data-root "$ROOT" --device "$DEVICE" --out-dir "$OUT/$recipe" --quiet \
    "$@" "${EXTRA_TRAIN[@]}"
}

attack() {  # attack RECIPE NAME [flags]: skipped when OUT/RECIPE/NAME holds its JSON
  local recipe=$1 name=$2; shift 2
  if compgen -G "$OUT/$recipe/$name/eval_*.json" > /dev/null; then
    say "$recipe $name: done, skipped"
    return
  fi
  say "$recipe $name: attacking"
  local rc=0
  "${CLI[@]}" eval "$OUT/$recipe/checkpoint.pt" --recipe "$recipe" --data-root "$ROOT" --device "$DEVICE" \
    --out "$OUT/$recipe/$name" "$@" "${EXTRA_EVAL[@]}" || rc=$?
  # 1: the evaluation ran and wrote its JSON, but a sanity check failed (reported in the table)
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
    exit "$rc"
  fi
}

QUICK=(--eps-curve "" --no-official --no-certify --no-sanity)
for data in $DATASETS; do
  case $data in
    cifar10|svhn) methods="clustr clustr-qtrades" ;;
    cifar100) methods="clustr-qtrades" ;;
    *) echo "$0: unknown data set '$data' in DATASETS (cifar10, svhn, cifar100)" >&2; exit 2 ;;
  esac
  train "$data-warmstart"
  for method in $methods; do
    recipe=$data-$method
    train "$recipe" --init-from "$OUT/$data-warmstart/checkpoint.pt"
    attack "$recipe" pgd20
    attack "$recipe" pgd100 --steps 100 "${QUICK[@]}"
    if [ "$method" = clustr-qtrades ]; then
      attack "$recipe" adaptive --attack magnet --steps 100 --restarts 10 "${QUICK[@]}"
    fi
    if [ "${AUTOATTACK:-0}" = 1 ]; then
      attack "$recipe" autoattack --attack autoattack "${QUICK[@]}"
    fi
  done
done
"$PY" -m clustr_fast.train.table collect "$OUT"
say "wrote $OUT/table1.json and $OUT/table1.md"
