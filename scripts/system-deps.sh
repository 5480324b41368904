#!/usr/bin/env bash
# What building moxnet needs beyond Rust: cmake and libclang, for llama.cpp (the language-model
# engine), which llama-cpp-sys-2 builds from the sources it vendors and binds with bindgen.
# Installed with apt on Debian and Ubuntu when missing (as root, or with sudo); elsewhere, install
# cmake and libclang with your package manager.
set -euo pipefail

have_libclang() {
    ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' ||
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang*.so*' >/dev/null
}

if command -v cmake >/dev/null && have_libclang; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "moxnet needs cmake and libclang to build llama.cpp: install them (e.g. cmake, clang-devel)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -qq cmake libclang-dev >/dev/null 2>&1 || {
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq cmake libclang-dev >/dev/null
}
