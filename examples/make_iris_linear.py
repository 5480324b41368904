"""Generates examples/iris-linear: a tiny ONNX classifier and two training checkpoints.

Run from the repository root with `python3 examples/make_iris_linear.py` (needs `pip install onnx`).
The outputs are committed; this script documents how they were made and re-makes them exactly.
"""

import json
import struct
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "iris-linear"

# A softmax regression over the four iris measurements (sepal length/width, petal length/width).
# Weights fitted offline on the classic data set; rows are setosa, versicolor, virginica.
WEIGHTS = [
    [0.42, 0.97, -2.45, -1.08],
    [0.53, -0.32, -0.21, -0.94],
    [-0.95, -0.65, 2.66, 2.02],
]
BIAS = [0.26, 1.64, -1.90]


def flat(rows):
    return [v for row in rows for v in row]


def make_onnx():
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    w = helper.make_tensor("W", TensorProto.FLOAT, [3, 4], flat(WEIGHTS))
    b = helper.make_tensor("B", TensorProto.FLOAT, [3], BIAS)
    gemm = helper.make_node("Gemm", ["features", "W", "B"], ["logits"], transB=1)
    softmax = helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)
    graph = helper.make_graph([gemm, softmax], "iris-linear", [features], [probabilities], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="moxnet-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    (OUT / "model.onnx").write_bytes(model.SerializeToString())


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, float list); F32 little-endian."""
    header, data, offset = {}, b"", 0
    for name, shape, values in tensors:
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def make_checkpoints():
    # Step 100: halfway through training (weights scaled down); step 200: final. The bias tensor
    # is identical in both, so the store keeps one copy of it.
    half = [[v * 0.5 for v in row] for row in WEIGHTS]
    write_safetensors(OUT / "checkpoints" / "step-100.safetensors", [("W", [3, 4], flat(half)), ("B", [3], BIAS)])
    write_safetensors(OUT / "checkpoints" / "step-200.safetensors", [("W", [3, 4], flat(WEIGHTS)), ("B", [3], BIAS)])


if __name__ == "__main__":
    (OUT / "checkpoints").mkdir(parents=True, exist_ok=True)
    make_onnx()
    make_checkpoints()
