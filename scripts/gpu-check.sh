#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU (and its driver). Two parts:
#
# 1. ONNX graphs, where this machine can build and download (skipped with a pack, below):
#    installs onnxruntime-gpu with its CUDA and cuDNN wheels from PyPI in a venv of its own,
#    builds moxnet (release), publishes the demo model (all-MiniLM-L6-v2) and calls it through a
#    node twice — engine "onnxruntime-cuda", then "onnxruntime" (CPU, same library) — at batch 1
#    and batch 64, and prints the GPU's ratio to the CPU. It fails if the node does not run the
#    GPU engine (it prints the node's reason).
# 2. Language models: moxnet with llama.cpp's CUDA backend (`--features cuda`) generates through
#    a node with `[llm] gpu_layers` 999 (engine "llama.cpp-cuda"), then 0 (the CPU), and prints
#    tokens per second, the ratio, and whether the greedy texts agree. Binary and model come from
#    `.gpu/pack.tar.xz` where `scripts/gpu-pack.sh` made one (for a GPU machine with no Rust
#    toolchain and no network: built elsewhere, the demo model shrunk to fit); else they are
#    built here where the CUDA toolkit is installed (nvcc on PATH or in $CUDA_PATH, default
#    /usr/local/cuda: llama.cpp links its static cudart, cuBLAS and culibos), with the demo
#    language model (SmolLM2-135M-Instruct); without the toolkit it says so and skips this part.
#
#   bash scripts/gpu-check.sh            # CALLS=50 by default
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
calls="${CALLS:-50}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
    { echo "gpu-check: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }

pack=.gpu/pack.tar.xz
if [ -f "$pack" ]; then
    echo "gpu-check: $pack found: language models only (ONNX graphs need a build and downloads here)"
else
    venv="$target/gpu-venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null ||
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'onnxruntime-gpu[cuda,cudnn]' numpy
    capi=$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
    library=$(ls "$capi"/libonnxruntime.so* | sort | tail -n 1)
    # The CUDA, cuBLAS and cuDNN libraries the wheels brought, for onnxruntime's CUDA provider.
    site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    nvlibs=$(find "$site/nvidia" -maxdepth 2 -name lib -type d 2>/dev/null | tr '\n' ':')
    export LD_LIBRARY_PATH="${nvlibs}${LD_LIBRARY_PATH:-}"
    echo "gpu-check: onnxruntime-gpu at $library"

    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    cargo build --quiet --release -p node --bin moxnet
    (cd guests && cargo build --quiet --release --locked)
    export MOXNET_RUNNER="$target/wasm32-wasip2/release/moxnet_runner.wasm"
    [ -f "$MOXNET_RUNNER" ] || MOXNET_RUNNER=guests/target/wasm32-wasip2/release/moxnet_runner.wasm
    python3 examples/minilm/fetch.py

    run_node() { # engine -> prints "p50_batch1 p50_batch64"
        local engine=$1 home
        home=$(mktemp -d)
        export MOXNET_HOME="$home"
        "$target/release/moxnet" init >/dev/null
        printf '[inference]\nengine = "%s"\nonnxruntime = "%s"\nengine_memory_mib = 65536\n' \
            "$engine" "$library" >"$home/config.toml"
        local model
        model=$("$target/release/moxnet" publish examples/minilm)
        "$target/release/moxnet" node --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 --no-mdns \
            >"$home/node.log" 2>&1 &
        local pid=$!
        for _ in $(seq 600); do [ -s "$home/api" ] && break; sleep 0.1; done
        "$venv/bin/python" - "$(cat "$home/api")" "$model" "$engine" "$calls" <<'PY' || { kill $pid; cat "$home/node.log" >&2; exit 1; }
import http.client, json, sys, time
api, model, engine, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = api.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port))
conn.request("GET", "/v2/health/ready")
ready = json.loads(conn.getresponse().read())
if ready.get("backend") != engine:
    sys.exit(f"gpu-check: the node runs {ready.get('backend')!r}, not {engine!r}: {ready.get('fallback')}")
words = "the quick brown fox jumps over the lazy dog and runs far away today ."
out = []
for batch in (1, 64):
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [batch], "data": [words] * batch}]})
    times = []
    for i in range(calls + 1):
        started = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        if "outputs" not in answer:
            sys.exit(f"gpu-check: {answer}")
        if i:
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    out.append(times[len(times) // 2])
    print(f"  {engine:<17} batch {batch:>2}: p50 {times[len(times) // 2]:8.2f} ms (backend {answer['parameters'].get('backend')})", file=sys.stderr)
print(out[0], out[1])
PY
        kill $pid; wait $pid 2>/dev/null || true
        rm -rf "$home"
    }

    echo "gpu-check: $calls calls each through a node (OIP v2 over HTTP)"
    read -r gpu1 gpu64 < <(run_node onnxruntime-cuda)
    [ -n "${gpu1:-}" ] || { echo "gpu-check: the GPU run failed (see above)" >&2; exit 1; }
    read -r cpu1 cpu64 < <(run_node onnxruntime)
    [ -n "${cpu1:-}" ] || { echo "gpu-check: the CPU run failed (see above)" >&2; exit 1; }
    python3 -c "import sys; g1,g64,c1,c64=map(float,sys.argv[1:]); print(f'gpu-check: GPU vs CPU: batch 1 {c1/g1:.2f}x faster ({g1:.2f} vs {c1:.2f} ms), batch 64 {c64/g64:.2f}x faster ({g64:.2f} vs {c64:.2f} ms)')" \
        "$gpu1" "$gpu64" "$cpu1" "$cpu64"
fi

# Language models on the GPU (llama.cpp's CUDA backend).
if [ -f "$pack" ]; then
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$pack" "$unpacked"
    moxnet="$unpacked/bin/moxnet"
    gguf="$unpacked/model.gguf"
    # cudart and cuBLAS (the pack's llama.cpp links them; 13 when built with gpu-pack.sh's
    # wheels): this machine's Python nvidia packages, or its toolkit.
    for dir in $(python3 -c 'import site; print(*site.getsitepackages())' 2>/dev/null) /usr/local/cuda/lib64; do
        for lib in $(find "$dir" -maxdepth 4 \( -name 'libcublas.so.*' -o -name 'libcudart.so.*' \) 2>/dev/null); do
            LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
        done
    done
    # The pack's own libraries first (its llama.cpp's dependencies find them there too).
    export LD_LIBRARY_PATH="$unpacked/bin:${LD_LIBRARY_PATH:-}"
    if ldd "$moxnet" | grep 'not found' >&2; then
        echo "gpu-check: the pack's moxnet cannot start here: the libraries above are missing (CUDA's cudart and cuBLAS, of the version it was built with)" >&2
        exit 1
    fi
    echo "gpu-check: moxnet from $pack ($(ldd "$moxnet" | awk '/libcu/ { print $3 }' | tr '\n' ' '))"
else
    cuda="${CUDA_PATH:-/usr/local/cuda}"
    [ -x "$cuda/bin/nvcc" ] && export PATH="$cuda/bin:$PATH"
    if ! command -v nvcc >/dev/null; then
        echo "gpu-check: no CUDA toolkit (nvcc) here: language models not tried on the GPU;" \
            "install it (or set CUDA_PATH) and run again to build moxnet --features cuda," \
            "or make a pack elsewhere (scripts/gpu-pack.sh)" >&2
        exit 0
    fi
    echo "gpu-check: building moxnet with llama.cpp's CUDA backend ($(nvcc --version | tail -n 1))"
    cargo build --quiet --release -p node --bin moxnet --features cuda
    python3 examples/smollm2/fetch.py
    moxnet="$target/release/moxnet"
    gguf=examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi

run_llm() { # gpu_layers expected_engine -> prints "prompt_tok_per_s generated_tok_per_s text_sha256"
    local layers=$1 expected=$2 home
    home=$(mktemp -d)
    export MOXNET_HOME="$home"
    "$moxnet" init >/dev/null
    printf '[llm]\ngpu_layers = %s\nmemory_mib = 8192\n' "$layers" >"$home/config.toml"
    local model
    model=$("$moxnet" publish "$gguf")
    "$moxnet" node --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 --no-mdns \
        >"$home/node.log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do [ -s "$home/api" ] && break; sleep 0.1; done
    python3 - "$(cat "$home/api")" "$model" "$expected" "$calls" <<'PY' || { kill $pid; cat "$home/node.log" >&2; exit 1; }
import hashlib, http.client, json, sys
api, model, expected, calls = sys.argv[1], sys.argv[2], sys.argv[3], min(int(sys.argv[4]), 10)
host, port = api.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=600)
prompt = "Write a long story about a lighthouse keeper who finds a map. " * 8
pp, gen, texts = [], [], set()
for i in range(calls + 1):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 128, "temperature": 0, "seed": 1})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    m = answer.get("moxnet") or sys.exit(f"gpu-check: {answer}")
    if m["engine"] != expected:
        sys.exit(f"gpu-check: the generation ran on {m['engine']!r}, not {expected!r}")
    texts.add(answer["choices"][0]["text"])
    u = answer["usage"]
    if i:
        pp.append(u["prompt_tokens"] / m["prompt_ms"] * 1000)
        gen.append(u["completion_tokens"] / m["generate_ms"] * 1000)
if len(texts) != 1:
    sys.exit(f"gpu-check: greedy generation on {expected} gave {len(texts)} different texts")
pp.sort(); gen.sort()
print(f"  {expected:<15} prompt {pp[len(pp) // 2]:9.1f} tok/s, generation {gen[len(gen) // 2]:8.1f} tok/s (medians of {calls})", file=sys.stderr)
print(pp[len(pp) // 2], gen[len(gen) // 2], hashlib.sha256(texts.pop().encode()).hexdigest())
PY
    grep -m 1 'language model loaded' "$home/node.log" >&2 || true
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf "$home"
}

echo "gpu-check: language model $(basename "$gguf"): greedy, 128 tokens, through a node"
read -r gpp ggen gtext < <(run_llm 999 llama.cpp-cuda)
[ -n "${gpp:-}" ] || { echo "gpu-check: the GPU generation failed (see above)" >&2; exit 1; }
read -r cpp cgen ctext < <(run_llm 0 llama.cpp)
[ -n "${cpp:-}" ] || { echo "gpu-check: the CPU generation failed (see above)" >&2; exit 1; }
python3 -c "import sys; gp,gg,cp,cg=map(float,sys.argv[1:]); print(f'gpu-check: language model GPU vs CPU: prompt {gp/cp:.1f}x ({gp:.0f} vs {cp:.0f} tok/s), generation {gg/cg:.1f}x ({gg:.0f} vs {cg:.0f} tok/s)')" \
    "$gpp" "$ggen" "$cpp" "$cgen"
if [ "$gtext" = "$ctext" ]; then
    echo "gpu-check: the GPU's greedy text is the CPU's"
else
    echo "gpu-check: the GPU's greedy text differs from the CPU's (their kernels round differently)"
fi
