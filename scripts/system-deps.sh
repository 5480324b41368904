#!/usr/bin/env bash
# What building and testing moxnet needs beyond Rust and Python:
# - cmake and libclang, for llama.cpp (the language-model engine), which llama-cpp-sys-2 builds
#   from the sources it vendors and binds with bindgen;
# - Chromium and Node.js (with npm), for the web UI's browser tests (tests/ui: playwright-core
#   drives Debian's Chromium; no browser is downloaded).
# Installed with apt on Debian and Ubuntu when missing (as root, or with sudo); elsewhere, install
# them with your package manager.
set -euo pipefail

# libclang itself (libclang.so, libclang-14.so.1, ...), which bindgen loads; not libclang-cpp,
# the C++ library some images carry without it.
have_libclang() {
    ldconfig -p 2>/dev/null | grep -q '[[:space:]]libclang\(-[0-9][0-9.]*\)\?\.so' ||
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null
}

missing=()
command -v cmake >/dev/null || missing+=(cmake)
have_libclang || missing+=(libclang-dev)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "moxnet needs ${missing[*]}: install them with your package manager" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
