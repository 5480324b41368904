#!/usr/bin/env python3
"""Greedy continuations from llama.cpp itself (llama-cpp-python), for the e2e suite.

    python3 llama_reference.py MODEL.gguf MAX_TOKENS PROMPT...
    python3 llama_reference.py --chat MODEL.gguf MAX_TOKENS MESSAGES_JSON

Prints one JSON line per prompt: {"prompt", "tokens", "text"}. With --chat, one chat
completion as llama-cpp-python makes it (the GGUF's Jinja chat template, greedy):
{"prompt_tokens", "completion_tokens", "text"}. Flash attention off, as the node's workers
run (and as llama-cpp-python's default); two threads.
"""
import json
import sys

from llama_cpp import Llama


def load(model):
    return Llama(model_path=model, n_ctx=2048, n_threads=2, n_threads_batch=2,
                 flash_attn=False, verbose=False)


def chat(model, max_tokens, messages):
    llm = load(model)
    out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                     temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                     repeat_penalty=1.0)
    print(json.dumps({"prompt_tokens": out["usage"]["prompt_tokens"],
                      "completion_tokens": out["usage"]["completion_tokens"],
                      "text": out["choices"][0]["message"]["content"]}), flush=True)


def main():
    if sys.argv[1] == "--chat":
        chat(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
        return
    model, max_tokens, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    llm = load(model)
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
