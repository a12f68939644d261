#!/usr/bin/env python3
"""Reference numbers for crates/ensembed/tests/it/backbone.rs from the official interpreter.

For every coral model and a few images, prints a Rust table row: the model file, the image
(relative to ../shared/data), the sum and the first four values of the dequantised pooled
feature (output of AVERAGE_POOL_2D / MEAN), and the classifier's top-1 index (-1 without a
head). Preprocessing and the feature definition are those of scripts/make_demo_features.py
(PIL bilinear resize to the model's input size, its input quantisation mapping); the
interpreter is tflite-runtime 2.14 with builtin kernels (no delegates), num_threads=1.

  python3 scripts/tflite_reference.py [--shared ../shared]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_features import input_mapping, open_model  # noqa: E402

MODELS = [
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
    "mobilenet_v2_1.0_224_quant.tflite",
    "tf2_mobilenet_v2_1.0_224_ptq.tflite",
    "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
    "mobilenet_v2_1.0_224_inat_insect_quant.tflite",
]
IMAGES = ["models/coral/cat.bmp", "models/coral/parrot.jpg", "cifar10/test/ship/0007.jpg"]


def pooled_tensor(it):
    details = {t["index"]: t for t in it.get_tensor_details()}
    outs = [details[o["outputs"][0]] for o in it._get_ops_details()
            if o["op_name"] in ("AVERAGE_POOL_2D", "MEAN")]
    return outs[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    data = args.shared / "data"
    for m in MODELS:
        it = open_model(data / "models" / "coral" / m)
        inp = it.get_input_details()[0]
        h, w = int(inp["shape"][1]), int(inp["shape"][2])
        mapping = input_mapping(inp)[1]
        pool = pooled_tensor(it)
        has_head = any(o["op_name"] == "SOFTMAX" for o in it._get_ops_details())
        for img in IMAGES:
            with Image.open(data / img) as im:
                px = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)
            it.set_tensor(inp["index"], mapping(px)[None])
            it.invoke()
            q = it.get_tensor(pool["index"]).astype(np.float32).reshape(-1)
            scale, zp = pool["quantization"]
            f = (scale * (q - zp)).astype(np.float32)
            top = -1
            if has_head:
                out = it.get_output_details()[0]
                top = int(np.argmax(it.get_tensor(out["index"]).reshape(-1)))
            first = ", ".join(f"{v:.7}" for v in f[:4])
            print(f'    ("{m}", "{img}", {f.astype(np.float64).sum():.4f}, [{first}], {top}),')


if __name__ == "__main__":
    main()
