"""Calls a moxnet node with Triton's own Python client (tritonclient[http], default binary
tensor data for inputs and outputs) and compares the answer with onnxruntime on the same graph.

Usage: triton_client.py HOST:PORT MODEL_ID MODEL.onnx INPUT OUTPUT
Prints one JSON line: the server metadata, the model metadata and the largest difference.
"""

import json
import sys

import numpy as np
import onnxruntime
import tritonclient.http as triton


def main():
    url, model_id, onnx_path, input_name, output_name = sys.argv[1:6]
    # The first call loads the model (an engine worker starts): on a loaded CI machine that can
    # take longer than the client's default 60 s.
    client = triton.InferenceServerClient(url=url, connection_timeout=300.0, network_timeout=300.0)
    assert client.is_server_live(), "not live"
    server = client.get_server_metadata()
    meta = client.get_model_metadata(model_id)
    assert client.is_model_ready(model_id), "model not ready"
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    inp = triton.InferInput(input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True: the client's default
    # No outputs named: the client asks for all of them as binary data.
    result = client.infer(model_id, [inp])
    got = result.as_numpy(output_name)
    # And one output named, as binary data explicitly.
    named = client.infer(
        model_id, [inp], outputs=[triton.InferRequestedOutput(output_name, binary_data=True)]
    )
    again = named.as_numpy(output_name)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got is not None and got.shape == want.shape, (got, want.shape)
    print(json.dumps({
        "server": server,
        "model": meta,
        "max_diff": float(np.max(np.abs(got - want))),
        "same_twice": bool(np.array_equal(got, again)),
        "shape": list(got.shape),
    }))


if __name__ == "__main__":
    main()
