#!/usr/bin/env python3
"""Runs an ONNX model under onnxruntime on preprocessed images, for the ONNX tests to compare
ensembed's executor with (crates/ensembed/tests/it/onnx.rs).

  python3 scripts/onnxruntime_features.py MODEL.onnx INPUT.f32 N H W OUT_PREFIX

INPUT.f32 holds N images as little-endian float32 in NHWC order (ensembed's preprocessed
input maps); they are transposed to NCHW and run one call per batch with one intra-op thread.
Every graph output is written to OUT_PREFIX.<output name>.f32 (float32, row-major).
"""

import sys

import numpy as np
import onnxruntime as ort

model, inp, n, h, w, prefix = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
x = np.fromfile(inp, dtype="<f4").reshape(n, h, w, 3).transpose(0, 3, 1, 2).copy()
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
outs = sess.run(names, {sess.get_inputs()[0].name: x})
for name, value in zip(names, outs):
    value.astype("<f4").tofile(f"{prefix}.{name}.f32")
print(ort.__version__)
