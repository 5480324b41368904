#!/usr/bin/env python3
"""llama.cpp itself (llama-cpp-python) on a GGUF file: the baseline of the language-model bench.

    python3 llama_bench.py MODEL.gguf THREADS PROMPT_FILE GEN_TOKENS ROUNDS

Prints one JSON line: the median over ROUNDS of prompt processing (tokens/s, the prompt's tokens
over the time to the first generated token) and generation (tokens/s after the first token),
greedy, flash attention off, as the node's workers run.
"""
import json
import statistics
import sys
import time

from llama_cpp import Llama


def main():
    model, threads, prompt_file, gen, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    prompt = open(prompt_file, encoding="utf-8").read()
    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                flash_attn=False, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    pp, tg, ttft = [], [], []
    for _ in range(rounds + 1):
        llm.reset()
        start = time.perf_counter()
        first = None
        made = 0
        for t in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            made += 1
            if first is None:
                first = time.perf_counter()
            if made >= gen:
                break
        end = time.perf_counter()
        ttft.append(first - start)
        pp.append(len(tokens) / (first - start))
        tg.append((made - 1) / (end - first))
    # The first round warms caches; it is left out.
    print(json.dumps({
        "prompt_tokens": len(tokens),
        "pp_tps": statistics.median(pp[1:]),
        "tg_tps": statistics.median(tg[1:]),
        "ttft_ms": statistics.median(ttft[1:]) * 1e3,
    }))


if __name__ == "__main__":
    main()
