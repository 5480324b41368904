#!/usr/bin/env bash
# The README's main command. Builds moxnet and its ONNX runner guest (and installs onnxruntime
# from PyPI, the engine the node runs graphs on, if Python lacks it), creates a fresh demo home,
# records the example package's training run (two snapshots), publishes it, then publishes the
# demo text-embedding model and the demo language model (SmolLM2-135M-Instruct, GGUF, from PyPI),
# starts a node, calls the embedding model and chats with the language model through it. On a terminal the
# node keeps running (Ctrl-C stops it); elsewhere (CI) it stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

bash scripts/system-deps.sh  # cmake and libclang, for llama.cpp
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet -p node
(cd guests && cargo build --quiet --release --locked)
export MOXNET_RUNNER="$target/wasm32-wasip2/release/moxnet_runner.wasm"
[ -f "$MOXNET_RUNNER" ] || MOXNET_RUNNER=guests/target/wasm32-wasip2/release/moxnet_runner.wasm
python3 examples/minilm/fetch.py
python3 examples/smollm2/fetch.py
# The node runs guests' graphs on onnxruntime (its shared library comes with the PyPI wheel);
# without it, on native tract, and says so.
python3 -c 'import onnxruntime' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check onnxruntime ||
    echo "demo: no onnxruntime (pip failed): the node will run graphs on native tract" >&2
moxnet() { "$target/debug/moxnet" "$@"; }

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

echo "== moxnet publish examples/minilm (text embeddings; the interface is read from the graph)"
mini=$(moxnet publish examples/minilm)
echo "$mini"
moxnet show "$mini"

echo "== moxnet publish examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (a language model, bare GGUF)"
llm=$(moxnet publish examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
echo "$llm"
moxnet show "$llm"

echo "== moxnet node (HTTP API and Open Inference Protocol v2 on 127.0.0.1)"
# The binary itself, not the `moxnet` function: `$!` must be the node's pid (a function in the
# background runs in a subshell, and killing that subshell would orphan the node).
"$target/debug/moxnet" node --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 --no-mdns &
node_pid=$!
trap 'kill $node_pid 2>/dev/null || true; wait $node_pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    [ -s "$MOXNET_HOME/api" ] && break
    kill -0 $node_pid 2>/dev/null || { echo "the node exited" >&2; exit 1; }
    sleep 0.1
done
api="http://$(cat "$MOXNET_HOME/api")"

echo "== moxnet search embeddings (the catalogue's index; votes and usage rank it)"
moxnet search embeddings
echo "== moxnet call $mini"
moxnet call "$mini" --input '{"text": ["moxnet shares models like code", "A model goes live the moment it is published."]}'

echo "== moxnet chat SmolLM2-135M-Instruct.Q4_1 (streamed as it is generated)"
moxnet chat SmolLM2-135M-Instruct.Q4_1 --message "What is the capital of France?" --temperature 0 --max-tokens 48

echo
echo "Published models $id (iris-linear), $mini (all-MiniLM-L6-v2) and $llm (SmolLM2-135M-Instruct) in $MOXNET_HOME."
echo "Browse, call and vote on them in the web UI: $api/ (the iris model's training curves: $api/m/$id)"
echo "Chat with the language model (one message per line):"
echo "  MOXNET_HOME=$MOXNET_HOME $target/debug/moxnet chat SmolLM2-135M-Instruct.Q4_1"
echo "or with any OpenAI client (base URL $api/v1, the token in $MOXNET_HOME/api.token as the key)."
echo "Call the embedding model:"
echo "  MOXNET_HOME=$MOXNET_HOME $target/debug/moxnet call $mini --input '{\"text\": [\"your sentence here\"]}'"
echo "or over HTTP (Open Inference Protocol v2):"
echo "  curl -s $api/v2/models/$mini/infer -H 'Content-Type: application/json' -d '{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"your sentence here\"]}]}'"
if [ -t 1 ] && [ -z "${CI:-}" ]; then
    echo "The node is running; Ctrl-C stops it."
    wait $node_pid
fi
