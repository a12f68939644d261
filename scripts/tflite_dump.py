#!/usr/bin/env python3
"""Dump every operator's output tensor of a TFLite model on one image, as the official
interpreter (tflite-runtime, builtin kernels, no delegates, num_threads=1) computes it.

Used while developing `crates/ensembed/src/backbone/` to find the first operator where the
Rust interpreter departs from TFLite. Preprocessing is that of scripts/make_demo_features.py
(PIL open -> RGB -> resize to the model's input with Image.BILINEAR -> input quantisation).

  python3 scripts/tflite_dump.py MODEL.tflite IMAGE OUT_DIR

OUT_DIR receives raw bytes, so that any language reads them: `pixels.bin` (uint8 [h, w, 3]
after resizing), `input.bin` (what was fed) and, for operator i, `op{i}.bin` (its first
output, raw quantised values, NHWC), with `ops.txt` listing one `index name shape dtype` line
per operator.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_features import input_mapping  # noqa: E402

try:
    from tflite_runtime.interpreter import Interpreter
except ImportError:  # pragma: no cover
    from ai_edge_litert.interpreter import Interpreter


def main():
    model, image, out = sys.argv[1:4]
    it = Interpreter(model_path=model, num_threads=1, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    with Image.open(image) as im:
        px = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)
    x = input_mapping(inp)[1](px)
    it.set_tensor(inp["index"], x[None])
    it.invoke()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pixels.bin").write_bytes(px.tobytes())
    (out / "input.bin").write_bytes(np.ascontiguousarray(x).tobytes())
    lines = []
    for op in it._get_ops_details():
        i = op["index"]
        t = it.get_tensor(op["outputs"][0])
        (out / f"op{i}.bin").write_bytes(np.ascontiguousarray(t).tobytes())
        lines.append(f"{i} {op['op_name']} {list(t.shape)} {t.dtype}\n")
    (out / "ops.txt").write_text("".join(lines))


if __name__ == "__main__":
    main()
