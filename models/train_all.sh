#!/usr/bin/env bash
# Train every model shipped in models/ (one after another, one CPU thread each), from the repo root:
#   pip install -e '.[train]' && scripts/fetch_data.sh data && models/train_all.sh
# Pass model names to train only those (e.g. models/train_all.sh fcnn_mnist_3v7_pgd2).
# The two models of the first commit (fcnn_mnist_3v7_benign, fcnn_tiny_mnist_3v7_benign) are listed too.
set -euo pipefail
PY=${PYTHON:-python}
declare -A CMD=(
  [fcnn_mnist_3v7_benign]="--data data/mnist --arch fcnn-regular --epochs 10"
  [fcnn_tiny_mnist_3v7_benign]="--data data/mnist --arch fcnn-tiny --epochs 20"
  [fcnn_fmnist_3v7_benign]="--data data/fashion-mnist --arch fcnn-regular --epochs 10"
  [fcnn_mnist_3v7_pgd1]="--data data/mnist --arch fcnn-regular --method pgd --eps-train 1 --epochs 10"
  [fcnn_mnist_3v7_pgd2]="--data data/mnist --arch fcnn-regular --method pgd --eps-train 2 --epochs 10"
  [fcnn_mnist_3v7_pgd3]="--data data/mnist --arch fcnn-regular --method pgd --eps-train 3 --epochs 10"
  [fcnn_mnist_3v7_trades2]="--data data/mnist --arch fcnn-regular --method trades --eps-train 2 --epochs 10"
  [fcnn_fmnist_3v7_pgd1]="--data data/fashion-mnist --arch fcnn-regular --method pgd --eps-train 1 --epochs 10"
  [fcnn_fmnist_3v7_pgd2]="--data data/fashion-mnist --arch fcnn-regular --method pgd --eps-train 2 --epochs 10"
  [fcnn_fmnist_3v7_pgd3]="--data data/fashion-mnist --arch fcnn-regular --method pgd --eps-train 3 --epochs 10"
  [fcnn_fmnist_3v7_trades2]="--data data/fashion-mnist --arch fcnn-regular --method trades --eps-train 2 --epochs 10"
  [fcnn_small_mnist_3v7_benign]="--data data/mnist --arch fcnn-small --epochs 10"
  [fcnn_small_mnist_3v7_pgd2]="--data data/mnist --arch fcnn-small --method pgd --eps-train 2 --epochs 10"
  [fcnn_smaller_mnist_3v7_benign]="--data data/mnist --arch fcnn-smaller --epochs 10"
  [fcnn_smaller_mnist_3v7_pgd2]="--data data/mnist --arch fcnn-smaller --method pgd --eps-train 2 --epochs 10"
  [cnn_mnist_3v7_benign]="--data data/mnist --arch cnn --epochs 3"
  [cnn_mnist_3v7_pgd2]="--data data/mnist --arch cnn --method pgd --eps-train 2 --epochs 3"
  [cnn_mnist_3v7_trades2]="--data data/mnist --arch cnn --method trades --eps-train 2 --epochs 3"
  [fcnn_mnist_10class_benign]="--data data/mnist --classes 0 1 2 3 4 5 6 7 8 9 --arch fcnn-regular --epochs 10"
  [fcnn_mnist_10class_pgd2]="--data data/mnist --classes 0 1 2 3 4 5 6 7 8 9 --arch fcnn-regular --method pgd --eps-train 2 --epochs 10"
)
ORDER=(fcnn_mnist_3v7_benign fcnn_tiny_mnist_3v7_benign fcnn_fmnist_3v7_benign
       fcnn_mnist_3v7_pgd1 fcnn_mnist_3v7_pgd2 fcnn_mnist_3v7_pgd3 fcnn_mnist_3v7_trades2
       fcnn_fmnist_3v7_pgd1 fcnn_fmnist_3v7_pgd2 fcnn_fmnist_3v7_pgd3 fcnn_fmnist_3v7_trades2
       fcnn_small_mnist_3v7_benign fcnn_small_mnist_3v7_pgd2 fcnn_smaller_mnist_3v7_benign fcnn_smaller_mnist_3v7_pgd2
       cnn_mnist_3v7_benign cnn_mnist_3v7_pgd2 cnn_mnist_3v7_trades2
       fcnn_mnist_10class_benign fcnn_mnist_10class_pgd2)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for n in "${names[@]}"; do
  [ -n "${CMD[$n]:-}" ] || { echo "unknown model $n" >&2; exit 2; }
  echo "== $n"
  $PY models/train.py ${CMD[$n]} --out "models/$n"
done
