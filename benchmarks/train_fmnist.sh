#!/usr/bin/env bash
# The recorded training run of issue 6: the `cifar` AlexNet on Fashion-MNIST (Debian's
# dataset-fashion-mnist package) on this machine, then its figures copied next to the benchmarks.
#   bash benchmarks/train_fmnist.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-4}"
out=runs/fmnist
start=$(date +%s)
alexnet-viz train --arch cifar --data fashion-mnist --epochs "$epochs" --out "$out"
end=$(date +%s)
mkdir -p benchmarks/results/fmnist
cp "$out/model.json" "$out/curves.png" benchmarks/results/fmnist/
echo "wall time: $((end - start)) s for $epochs epochs (nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))" \
    | tee benchmarks/results/fmnist/wall_time.txt
