#!/usr/bin/env python3
"""Writes a smaller copy of a GGUF language model: its first N layers, its token embedding
requantised to Q4_1.

    python3 scripts/gguf_shrink.py IN.gguf OUT.gguf --layers 4

For the GPU check (`scripts/gpu-pack.sh`): what travels to a lent GPU machine is limited to
64 MiB and nothing can be downloaded there, while the demo language model (SmolLM2-135M-Instruct,
Q4_1) is 98 MB, 30 MB of it the Q8_0 token embedding. The copy keeps the real tokenizer, chat
template and weights of the layers it keeps, so llama.cpp loads and runs it like any model of its
architecture (its text is poorer: it is for measuring speed, not for reading).

Needs the `gguf` package (llama.cpp's own GGUF reader and writer, from PyPI) on PYTHONPATH.
"""
import argparse
import sys

import gguf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--layers", type=int, required=True, help="layers kept (the first N)")
    args = parser.parse_args()

    reader = gguf.GGUFReader(args.source)
    arch = reader.fields["general.architecture"].contents()
    count_key = f"{arch}.block_count"
    layers = int(reader.fields[count_key].contents())
    if not 1 <= args.layers <= layers:
        sys.exit(f"gguf_shrink: --layers must be 1..{layers} for this model")

    writer = gguf.GGUFWriter(args.target, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        # The header's own fields are written by the writer; the architecture, by its constructor.
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == count_key:
            writer.add_uint32(count_key, args.layers)
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)

    kept = []
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= args.layers:
            continue
        data, kind = tensor.data, tensor.tensor_type
        if tensor.name == "token_embd.weight" and kind != gguf.GGMLQuantizationType.Q4_1:
            values = gguf.quants.dequantize(data, kind)
            kind = gguf.GGMLQuantizationType.Q4_1
            data = gguf.quants.quantize(values, kind)
        kept.append((tensor.name, data, kind))
    for name, data, kind in kept:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in kept:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    print(f"gguf_shrink: {len(kept)} tensors, {args.layers} of {layers} layers -> {args.target}")


if __name__ == "__main__":
    main()
