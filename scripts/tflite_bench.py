#!/usr/bin/env python3
"""tflite-runtime's speed on the coral models, for `cargo bench --bench backbone` to compare with.

For each model: images per second of `invoke()` on already-resized, already-quantised inputs
(the same work the Rust bench times after decoding), with `--threads` interpreter threads
(default 2), measured twice: with the interpreter's default delegates (XNNPACK where it applies)
and with builtin kernels only (the configuration that made data/demo, and the one whose
arithmetic ensembed reproduces). Prints one JSON object per line:

  {"model": FILE, "delegates": "default" | "builtin", "threads": N, "images": N, "images_per_s": X}

  python3 scripts/tflite_bench.py --models A.tflite B.tflite [--images DIR] [--count 64]

Images come from DIR/<class>/*.jpg (--count of them, evenly spaced in sorted order, as the
Rust bench picks them) or are random when DIR is absent.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_features import input_mapping  # noqa: E402

try:
    from tflite_runtime.interpreter import Interpreter, OpResolverType
except ImportError:  # pragma: no cover
    from ai_edge_litert.interpreter import Interpreter, OpResolverType


def load_images(folder, count):
    if folder is None or not Path(folder).is_dir():
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]
    files = sorted(Path(folder).glob("*/*.jpg"))
    files = files[:: max(len(files) // max(count, 1), 1)][:count]  # spread over the classes
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def bench(model, images, threads, builtin):
    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}
    it = Interpreter(model_path=str(model), num_threads=threads, **kw)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    mapping = input_mapping(inp)[1]
    xs = [mapping(np.asarray(Image.fromarray(px).resize((w, h), Image.BILINEAR)))[None] for px in images]
    it.set_tensor(inp["index"], xs[0])
    it.invoke()  # warm-up
    t0 = time.perf_counter()
    for x in xs:
        it.set_tensor(inp["index"], x)
        it.invoke()
    return len(xs) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--images", default=None)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    images = load_images(args.images, args.count)
    for m in args.models:
        for builtin in (False, True):
            ips = bench(m, images, args.threads, builtin)
            print(json.dumps({"model": Path(m).name, "delegates": "builtin" if builtin else "default",
                              "threads": args.threads, "images": len(images), "images_per_s": round(ips, 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
