#!/usr/bin/env python3
"""Extract the demo feature sample shipped in data/demo/.

Pooled (pre-classifier) features of real CIFAR-10 images through three real,
pretrained, quantised TFLite MobileNetV2 backbones (all 1280-d):

  mnv2-imagenet      mobilenet_v2_1.0_224_quant.tflite            (TF1 quant, ImageNet)
  mnv2-tf2-imagenet  tf2_mobilenet_v2_1.0_224_ptq.tflite          (TF2 post-training int8, ImageNet)
  mnv2-inat-bird     mobilenet_v2_1.0_224_inat_bird_quant.tflite  (TF1 quant, iNaturalist birds)

Selection: 10 class folders sorted by name (label = index: airplane=0 ... truck=9);
the first --train-per-class files (sorted by name) of each class from train/ and the
first --test-per-class of each class from test/.

Preprocessing: PIL open -> RGB -> resize 32x32 -> 224x224 with Image.BILINEAR -> uint8
pixels p in 0..255, then quantised to the model's input tensor:

  * mnv2-imagenet, mnv2-inat-bird: input uint8, scale 1/128, zero point 128.  These
    TF1 quantised models were built so that the raw pixel bytes ARE the input
    (real = (p - 128) / 128, the convention they were trained/calibrated with), so the
    bytes are fed unchanged.
  * mnv2-tf2-imagenet: although "int8", its graph input is uint8 with scale 1/127.5
    (0.007843137718737125) and zero point 127, followed by a QUANTIZE op to int8.  The
    params are not the 1/128-128 pair, so the generic rule is used: real = p/127.5 - 1
    (the MobileNet convention), q = clip(round(real/scale) + zero_point, 0, 255).  With
    these params this gives q = p for p <= 127 and q = p - 1 for p >= 128.

Any other input params would also go through the generic rule.

Feature: the output tensor of the AVERAGE_POOL_2D (TF1 models) or MEAN (TF2 model)
operator, [1,1,1,1280], dequantised with its own params (real = scale*(q - zp)),
flattened.  Not L2-normalised (ensembed normalises at use); post-ReLU6 averages, so
non-negative.  Stored as float16.

Outputs (written atomically: temp file then rename) under --out:
  train.npz / test.npz  one float16 [n,1280] array per backbone name + `labels` (int64 [n])
  train_ids.txt / test_ids.txt  one relative image path per row, e.g. train/cat/0003.jpg

Regenerate from the repository root (needs ../shared):
  pip install "numpy<2" pillow tflite-runtime==2.14.0
  python3 scripts/make_demo_features.py
"""

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from tflite_runtime.interpreter import Interpreter
except ImportError:  # pragma: no cover - fallback package
    from ai_edge_litert.interpreter import Interpreter

REPO_ROOT = Path(__file__).resolve().parent.parent

BACKBONES = [
    ("mnv2-imagenet", "mobilenet_v2_1.0_224_quant.tflite"),
    ("mnv2-tf2-imagenet", "tf2_mobilenet_v2_1.0_224_ptq.tflite"),
    ("mnv2-inat-bird", "mobilenet_v2_1.0_224_inat_bird_quant.tflite"),
]
SIZE = 224
DIM = 1280
CHUNK = 100  # images per worker task


# ---------------------------------------------------------------------------
# Model helpers


def open_model(path, num_threads=1):
    it = Interpreter(model_path=str(path), num_threads=num_threads,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


def find_pool_tensor(it):
    """Index and details of the pooled tensor (output of AVERAGE_POOL_2D / MEAN)."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    cands = []
    if hasattr(it, "_get_ops_details"):
        for op in it._get_ops_details():
            if op["op_name"] in ("AVERAGE_POOL_2D", "MEAN"):
                for t in op["outputs"]:
                    cands.append(details[t])
    else:  # fall back on the shape
        cands = [t for t in details.values() if list(t["shape"]) == [1, 1, 1, DIM]]
    cands = [t for t in cands if int(np.prod(t["shape"])) == DIM]
    if len(cands) != 1:
        raise RuntimeError(f"expected one pooled tensor of {DIM} values, got {len(cands)}")
    return cands[0]


def input_mapping(inp):
    """Return (description, function uint8 HxWx3 -> input array) for an input tensor."""
    dtype = inp["dtype"]
    scale, zp = inp["quantization"]
    if dtype == np.uint8 and abs(scale - 1 / 128) < 1e-7 and zp == 128:
        return ("raw pixel bytes (uint8, scale 1/128, zp 128: real=(p-128)/128)",
                lambda px: px)
    if dtype == np.float32:
        return ("float real = p/127.5 - 1",
                lambda px: (px.astype(np.float32) / 127.5 - 1.0))
    info = np.iinfo(dtype)

    def f(px):
        real = px.astype(np.float64) / 127.5 - 1.0
        q = np.round(real / scale) + zp
        return np.clip(q, info.min, info.max).astype(dtype)

    return (f"generic: real=p/127.5-1, q=clip(round(real/{scale:.9g})+{zp}) as {np.dtype(dtype).name}", f)


def run_one(it, inp, pool, mapping, px):
    it.set_tensor(inp["index"], mapping(px)[None])
    it.invoke()
    q = it.get_tensor(pool["index"]).astype(np.float32).reshape(-1)
    scale, zp = pool["quantization"]
    if pool["dtype"] == np.float32:
        return q
    return (scale * (q - zp)).astype(np.float32)


def load_pixels(path):
    with Image.open(path) as im:
        im = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


# ---------------------------------------------------------------------------
# Worker (one interpreter per backbone per process, cached)

_CACHE = {}


def _worker(task):
    name, model_path, paths = task
    if name not in _CACHE:
        it = open_model(model_path)
        inp = it.get_input_details()[0]
        _CACHE[name] = (it, inp, find_pool_tensor(it), input_mapping(inp)[1])
    it, inp, pool, mapping = _CACHE[name]
    out = np.empty((len(paths), DIM), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = run_one(it, inp, pool, mapping, load_pixels(p))
    return out


# ---------------------------------------------------------------------------


def list_split(cifar, split, per_class):
    classes = sorted(d.name for d in (cifar / split).iterdir() if d.is_dir())
    if len(classes) != 10:
        raise RuntimeError(f"expected 10 class folders in {cifar / split}, got {classes}")
    rel, labels = [], []
    for lab, c in enumerate(classes):
        files = sorted(f.name for f in (cifar / split / c).iterdir() if f.suffix == ".jpg")
        if len(files) < per_class:
            raise RuntimeError(f"{split}/{c} has only {len(files)} images")
        for f in files[:per_class]:
            rel.append(f"{split}/{c}/{f}")
            labels.append(lab)
    return classes, rel, np.asarray(labels, dtype=np.int64)


def sanity_check(models_dir):
    labels = (models_dir / "imagenet_labels.txt").read_text().splitlines()
    cat = load_pixels(models_dir / "cat.bmp")
    ok = True
    for name, fname in BACKBONES:
        it = open_model(models_dir / fname)
        inp = it.get_input_details()[0]
        pool = find_pool_tensor(it)
        desc, mapping = input_mapping(inp)
        feat = run_one(it, inp, pool, mapping, cat)
        out = it.get_output_details()[0]
        probs = it.get_tensor(out["index"]).reshape(-1).astype(np.float64)
        top = int(np.argmax(probs))
        s, z = out["quantization"]
        p = s * (probs[top] - z) if out["dtype"] != np.float32 else probs[top]
        print(f"[{name}] {fname}")
        print(f"    input: {np.dtype(inp['dtype']).name} {list(inp['shape'])} "
              f"quant={inp['quantization']} -> {desc}")
        print(f"    pooled tensor #{pool['index']}: '{pool['name']}' {list(pool['shape'])} "
              f"{np.dtype(pool['dtype']).name} quant={pool['quantization']}")
        print(f"    cat.bmp pooled: min={feat.min():.4f} max={feat.max():.4f} "
              f"mean={feat.mean():.4f} zeros={int((feat == 0).sum())}")
        if len(probs) == len(labels):
            print(f"    cat.bmp -> class {top} '{labels[top]}' (p={p:.3f})")
            if labels[top] != "Egyptian cat":
                print("    !! expected 'Egyptian cat'")
                ok = False
        else:
            print(f"    cat.bmp -> class {top} of {len(probs)} (p={p:.3f}; "
                  f"no label file for this head)")
    return ok


def save_npz_atomic(path, arrays):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)


def save_text_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "demo")
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()

    shared = args.shared.resolve()
    cifar = shared / "data" / "cifar10"
    models_dir = shared / "data" / "models" / "coral"
    args.out.mkdir(parents=True, exist_ok=True)

    print("== sanity check on cat.bmp")
    if not sanity_check(models_dir):
        sys.exit("sanity check failed")

    splits = {}
    for split, per in (("train", args.train_per_class), ("test", args.test_per_class)):
        classes, rel, labels = list_split(cifar, split, per)
        splits[split] = (rel, labels)
        print(f"== {split}: {len(rel)} images ({per}/class), classes {classes}")

    tasks, where = [], []
    for name, fname in BACKBONES:
        for split, (rel, _) in splits.items():
            for s in range(0, len(rel), CHUNK):
                paths = [str(cifar / r) for r in rel[s:s + CHUNK]]
                tasks.append((name, str(models_dir / fname), paths))
                where.append((name, split, s))

    feats = {(n, sp): np.empty((len(splits[sp][0]), DIM), np.float32)
             for n, _ in BACKBONES for sp in splits}
    t0 = time.time()
    print(f"== extracting: {len(tasks)} chunks of <= {CHUNK} images, {args.workers} workers")
    with mp.Pool(args.workers) as pool:
        for done, ((name, split, s), out) in enumerate(
                zip(where, pool.imap(_worker, tasks)), 1):
            feats[(name, split)][s:s + len(out)] = out
            print(f"  [{done:3d}/{len(tasks)}] {name} {split} {s}..{s + len(out)} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    print(f"== extraction took {time.time() - t0:.1f}s")

    for split, (rel, labels) in splits.items():
        arrays = {}
        for name, _ in BACKBONES:
            f = feats[(name, split)]
            assert np.isfinite(f).all() and f.min() >= 0
            arrays[name] = np.ascontiguousarray(f.astype(np.float16))
            print(f"  {split} {name}: shape {f.shape} min {f.min():.4f} max {f.max():.4f} "
                  f"zero-frac {(f == 0).mean():.3f} zero-rows {int((f.sum(1) == 0).sum())}")
        arrays["labels"] = labels
        save_npz_atomic(args.out / f"{split}.npz", arrays)
        save_text_atomic(args.out / f"{split}_ids.txt", "".join(r + "\n" for r in rel))

    total = 0
    for p in sorted(args.out.iterdir()):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.name}: {p.stat().st_size:,} bytes")
    print(f"== {args.out}: {total:,} bytes total")


if __name__ == "__main__":
    main()
