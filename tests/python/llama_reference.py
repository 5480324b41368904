#!/usr/bin/env python3
"""Greedy continuations from llama.cpp itself (llama-cpp-python), for the e2e suite.

    python3 llama_reference.py MODEL.gguf MAX_TOKENS PROMPT...

Prints one JSON line per prompt: {"prompt", "tokens", "text"}. Flash attention off, as the
node's workers run (and as llama-cpp-python's default); two threads.
"""
import json
import sys

from llama_cpp import Llama


def main():
    model, max_tokens, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    llm = Llama(model_path=model, n_ctx=2048, n_threads=2, n_threads_batch=2,
                flash_attn=False, verbose=False)
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        out = []
        for t in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                              repeat_penalty=1.0):
            if t == llm.token_eos():
                break
            out.append(t)
            if len(out) >= max_tokens:
                break
        text = llm.detokenize(out).decode("utf-8", "replace")
        print(json.dumps({"prompt": prompt, "tokens": out, "text": text}), flush=True)


if __name__ == "__main__":
    main()
