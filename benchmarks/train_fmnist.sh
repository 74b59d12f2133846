#!/usr/bin/env bash
# The recorded training run of issue 6: the `cifar` AlexNet on Fashion-MNIST (Debian's
# dataset-fashion-mnist package) on this machine, then its figures copied next to the benchmarks.
#   bash benchmarks/train_fmnist.sh [EPOCHS]
# Every setting of the recorded run is spelled out, so that defaults chosen from the data's size (issue 15)
# cannot change what this script measures; tests/test_train.py checks that these flags still mean the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-4}"
out=runs/fmnist
start=$(date +%s)
alexnet-viz train --arch cifar --data fashion-mnist --epochs "$epochs" --batch-size 128 --lr 0.05 --optimizer sgd --init none --freeze none --out "$out"
end=$(date +%s)
mkdir -p benchmarks/results/fmnist
cp "$out/model.json" "$out/curves.png" benchmarks/results/fmnist/
echo "wall time: $((end - start)) s for $epochs epochs (nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))" \
    | tee benchmarks/results/fmnist/wall_time.txt
