#!/usr/bin/env bash
# The README's main command. Builds moxnet, creates a fresh demo home, records the example
# package's training run (two snapshots), publishes it as a signed model, and shows it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p node
moxnet() { "${CARGO_TARGET_DIR:-target}/debug/moxnet" "$@"; }

export MOXNET_HOME="${MOXNET_DEMO_HOME:-${CARGO_TARGET_DIR:-target}/moxnet-demo}"
rm -rf "$MOXNET_HOME"
pkg=examples/iris-linear

echo "== moxnet init"
moxnet init
echo "== moxnet snapshot add (two training steps)"
moxnet snapshot add "$pkg" --step 100 --metric loss=0.61 --metric accuracy=0.83 \
    --weights "$pkg/checkpoints/step-100.safetensors"
moxnet snapshot add "$pkg" --step 200 --metric loss=0.38 --metric accuracy=0.96 \
    --weights "$pkg/checkpoints/step-200.safetensors"
echo "== moxnet publish $pkg"
id=$(moxnet publish "$pkg")
echo "$id"
echo "== moxnet show $id"
moxnet show "$id"
echo "== moxnet history $id"
moxnet history "$id"
echo "== moxnet verify"
moxnet verify
echo
echo "Published model $id in $MOXNET_HOME."
echo "Export it with: MOXNET_HOME=$MOXNET_HOME ${CARGO_TARGET_DIR:-target}/debug/moxnet get $id -o ./iris-linear-copy"
