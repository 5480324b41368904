#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole suite.
# - Python packages for the independent check of the protocol test vectors.
# - cargo-nextest (if missing).
# The disk-full test mounts a small tmpfs and so needs root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import cbor2, blake3, cryptography' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check cbor2 blake3 cryptography
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
