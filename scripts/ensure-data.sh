#!/usr/bin/env bash
# Make sure Fashion-MNIST's four IDX files are on this machine; never downloads from the web.
# Order: $SCALELAB_DATA_DIR, the Debian package's folder, ./data/fashion-mnist; otherwise install
# the Debian package `dataset-fashion-mnist` (as root) or unpack it into ./data (without root).
set -euo pipefail
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
system_dir=/usr/share/datasets/fashion-mnist
local_dir=data/fashion-mnist

has_all() {
  local dir=$1 f
  for f in $files; do [ -s "$dir/$f" ] || [ -s "$dir/${f%.gz}" ] || return 1; done
}

for dir in "${SCALELAB_DATA_DIR:-}" "$system_dir" "$local_dir"; do
  if [ -n "$dir" ] && has_all "$dir"; then echo "Fashion-MNIST: $dir"; exit 0; fi
done

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
  # A fresh machine has no package lists: update first, quietly.
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
  if has_all "$system_dir"; then echo "Fashion-MNIST: $system_dir"; exit 0; fi
fi

if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  echo "Fashion-MNIST: unpacking the Debian package into $local_dir (no root needed)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
    dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
    mkdir -p "$local_dir"
    cp "$tmp/root$system_dir"/*.gz "$local_dir"/
  fi
  rm -rf "$tmp"
  if has_all "$local_dir"; then echo "Fashion-MNIST: $local_dir"; exit 0; fi
fi

echo "error: Fashion-MNIST not found. Get it one of three ways: (1) as root, 'apt-get update && apt-get install dataset-fashion-mnist' (files land in $system_dir); (2) without root, 'apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb pkg && mkdir -p $local_dir && cp pkg$system_dir/*.gz $local_dir/'; (3) put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder and pass --data-dir DIR or set SCALELAB_DATA_DIR=DIR." >&2
exit 1
