#!/usr/bin/env bash
# Packs, here, what the language-model GPU check needs on a GPU machine that has neither a Rust
# toolchain nor a network (a lent device machine, to which at most 64 MiB travels with the
# repository): `.gpu/pack.tar.xz` holds moxnet built with llama.cpp's CUDA backend
# (`--features cuda`) and its llama.cpp libraries, and a shrunk copy of the demo language model
# (its first $LAYERS layers, embedding in Q4_1: scripts/gguf_shrink.py). On the GPU machine,
# `bash scripts/gpu-check.sh` then finds the pack and uses it instead of building.
#
#   bash scripts/gpu-pack.sh       # CUDA_ARCHS=90-real (H100, H200: machine code only), LAYERS=4
#
# The CUDA toolkit: nvcc on PATH or in $CUDA_PATH (default /usr/local/cuda); else CUDA 13.0's
# compiler, headers, cudart and cuBLAS from NVIDIA's PyPI wheels, installed in the target folder.
# PyPI has no static cuBLAS, so llama.cpp is built as shared libraries (LLAMA_BUILD_SHARED_LIBS=1)
# that the binary finds beside itself ($ORIGIN); cudart and cuBLAS 13 then come from the GPU
# machine at run time (its Python's nvidia packages, or its toolkit). It is built without
# llama.cpp's virtual-memory pool (GGML_CUDA_NO_VMM: the wheels have no libcuda stub to link),
# so it needs no driver to start; cudart finds the driver's libcuda when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
archs="${CUDA_ARCHS:-90-real}"
layers="${LAYERS:-4}"
pack=.gpu
limit=$((60 << 20)) # leaves 4 MiB of the 64 for the repository itself

cuda="${CUDA_PATH:-/usr/local/cuda}"
if [ ! -x "$cuda/bin/nvcc" ] && command -v nvcc >/dev/null; then
    cuda=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
fi
if [ ! -x "$cuda/bin/nvcc" ]; then
    wheels="$target/cuda-wheels"
    cuda="$wheels/nvidia/cu13"
    if [ ! -x "$cuda/bin/nvcc" ]; then
        echo "gpu-pack: no CUDA toolkit here: installing CUDA 13.0's from PyPI into $wheels"
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$wheels" \
            nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
            nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
    fi
    # The wheels hold the toolkit's files, but not its link names or its target layout.
    for l in cudart cublas cublasLt; do ln -sf "lib$l.so.13" "$cuda/lib/lib$l.so"; done
    ln -sfn lib "$cuda/lib64"
    mkdir -p "$cuda/targets/x86_64-linux"
    ln -sfn ../../include "$cuda/targets/x86_64-linux/include"
    ln -sfn ../../lib "$cuda/targets/x86_64-linux/lib"
fi
echo "gpu-pack: $("$cuda/bin/nvcc" --version | tail -n 1), for CUDA architectures $archs"

build="$target/gpu"
# llama-cpp-sys-2 does not rebuild when only a CMAKE_ variable changes: start it afresh when the
# architectures differ from the last build's.
if [ "$(cat "$build/cuda-archs" 2>/dev/null)" != "$archs" ] && [ -d "$build/release" ]; then
    CARGO_TARGET_DIR="$build" cargo clean --release -p llama-cpp-sys-2
fi
mkdir -p "$build"
echo "$archs" >"$build/cuda-archs"
# Its build script also links the libraries' unversioned names into the target folder (links
# that dangle there), and fails when it runs again and finds them: clear them first.
for dir in "$build/release" "$build/release/deps" "$build/release/examples"; do
    if [ -d "$dir" ]; then
        find "$dir" -maxdepth 1 -type l \( -name 'libllama*.so*' -o -name 'libggml*.so*' \) -delete
    fi
done
# shellcheck disable=SC2016 # $ORIGIN is the loader's, not the shell's
CUDA_PATH="$cuda" CUDAToolkit_ROOT="$cuda" PATH="$cuda/bin:$PATH" \
    CMAKE_CUDA_COMPILER="$cuda/bin/nvcc" CMAKE_CUDA_ARCHITECTURES="$archs" \
    LLAMA_BUILD_SHARED_LIBS=1 GGML_CUDA_NO_VMM=ON CARGO_TARGET_DIR="$build" \
    RUSTFLAGS='-C link-arg=-Wl,-rpath,$ORIGIN' \
    cargo build --release --locked -p node --bin moxnet --features cuda

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/bin"
cp "$build/release/moxnet" "$stage/bin/"
# The llama.cpp libraries the binary needs, directly or through each other (libllama, libggml*),
# by their sonames: the build leaves them in llama-cpp-sys-2's output folder.
built=$(ls -dt "$build"/release/build/llama-cpp-sys-2-*/out/lib | head -n 1)
LD_LIBRARY_PATH="$built:$cuda/lib64:$cuda/lib" ldd "$build/release/moxnet" |
    awk -v built="$built/" 'index($3, built) == 1 { print $1, $3 }' | while read -r name path; do
    cp -L "$path" "$stage/bin/$name"
done
strip "$stage"/bin/*

python3 examples/smollm2/fetch.py
venv="$target/gguf-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import gguf' 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0
"$venv/bin/python" scripts/gguf_shrink.py examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$stage/model.gguf" --layers "$layers"

rm -rf "$pack"
mkdir "$pack"
tar -C "$stage" -cf - bin model.gguf | xz -T0 -6 >"$pack/pack.tar.xz"
size=$(stat -c %s "$pack/pack.tar.xz")
if [ "$size" -gt "$limit" ]; then
    echo "gpu-pack: the pack is $((size >> 20)) MiB, over the $((limit >> 20)) MiB that can travel: try LAYERS=$((layers - 1))" >&2
    exit 1
fi
echo "gpu-pack: $pack/pack.tar.xz, $((size >> 20)) MiB ($(ls "$stage/bin" | tr '\n' ' '), model.gguf)"
echo "gpu-pack: on the GPU machine, with .gpu beside the repository: bash scripts/gpu-check.sh"
