#!/usr/bin/env python3
"""Reference reader and fixture writer for ensembed's PyTorch checkpoint reader
(crates/ensembed/src/backbone/{pickle,checkpoint}.rs, tests in tests/it/checkpoint.rs).

torch is not installed (and need not be): checkpoints are read with Python's own `pickle`
module, whose `Unpickler.find_class` is restricted to the few torch globals a state dict uses,
each replaced by a small numpy function, and whose `persistent_load` resolves storages. This
is independent of the Rust reader (different VM, numpy's strided views), so agreeing numbers
check it. Writing works the same way in reverse: fake `torch` modules whose functions and
classes carry torch's module and qualified names make `pickle` emit exactly the globals torch
emits, and the file layouts are torch's:

* legacy (torch < 1.6, `_use_new_zipfile_serialization=False`): pickles of the magic number
  0x1950a86a20f9469cfc6c, the protocol version 1001 and a sys_info dict, then the main pickle
  (storages as persistent ids `('storage', type, key, location, numel, None)`), then a pickle
  of the storage keys, then per key an int64 element count and the raw little-endian bytes;
* zip (torch >= 1.6): `<name>/data.pkl` (persistent ids `('storage', type, key, location,
  numel)`), `<name>/data/<key>` raw bytes, `<name>/byteorder`, `<name>/version`.

Usage:
  python3 scripts/torch_checkpoint_reference.py reference [--shared ../shared] [--effl DIR]
      prints the numbers kept beside the tests (key counts, shapes, sums, first values)
  python3 scripts/torch_checkpoint_reference.py fixtures [--shared ../shared]
      writes crates/ensembed/tests/corpus/torch/* (see the README there)
"""

import argparse
import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {  # storage class name -> numpy dtype (little-endian)
    "FloatStorage": "<f4", "HalfStorage": "<f2", "DoubleStorage": "<f8", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "BFloat16Storage": "bf16",
}

# ---------------------------------------------------------------------------------------------
# Reading


class Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel, self.array = kind, key, numel, None


class TensorSpec:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self):
        a = self.storage.array
        if not self.size or 0 in self.size:
            return np.zeros(self.size, dtype=a.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        assert last < len(a), "view beyond storage"
        strides = [s * a.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(a[self.offset:], self.size, strides).copy()


def rebuild_tensor(storage, offset, size, stride, *rest):
    return TensorSpec(storage, offset, size, stride)


def rebuild_parameter(data, *rest):
    return data


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): lambda s, enc: s.encode(enc),
    ("argparse", "Namespace"): argparse.Namespace,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f, encoding="utf-8")
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch" and name in DTYPES:
            return name
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid):
        assert pid[0] == "storage", pid
        kind, key, _location, numel = pid[1:5]
        return self.storages.setdefault(key, Storage(kind, key, numel))


def decode(raw, kind, numel, big=False):
    width = 2 if kind == "BFloat16Storage" else np.dtype(DTYPES[kind]).itemsize
    assert len(raw) >= numel * width, f"storage of {numel} elements holds {len(raw)} bytes"
    raw = raw[: numel * width]
    if kind == "BFloat16Storage":
        u = np.frombuffer(raw, dtype=">u2" if big else "<u2").astype(np.uint32) << 16
        return u.view(np.float32)
    dt = np.dtype(DTYPES[kind])
    return np.frombuffer(raw, dtype=dt.newbyteorder(">") if big else dt)


def read(path):
    """Returns (top-level object, {key: Storage}) with every storage's array loaded."""
    data = Path(path).read_bytes()
    storages = {}
    if data[:4] == b"PK\x03\x04":
        z = zipfile.ZipFile(io.BytesIO(data))
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        obj = RestrictedUnpickler(io.BytesIO(z.read(pkl)), storages).load()
        big = f"{prefix}byteorder" in z.namelist() and z.read(f"{prefix}byteorder") == b"big"
        for key, s in storages.items():
            s.array = decode(z.read(f"{prefix}data/{key}"), s.kind, s.numel, big)
        return obj, storages
    f = io.BytesIO(data)
    assert pickle.load(f) == MAGIC
    assert pickle.load(f) == 1001
    sys_info = pickle.load(f)
    assert sys_info["little_endian"]
    obj = RestrictedUnpickler(f, storages).load()
    for key in pickle.load(f):
        numel = struct.unpack("<q", f.read(8))[0]
        s = storages[key]
        width = 2 if s.kind == "BFloat16Storage" else np.dtype(DTYPES[s.kind]).itemsize
        s.array = decode(f.read(numel * width), s.kind, numel)
    return obj, storages


def state_dict(obj):
    """The float tensors of `obj['state_dict']` (or `obj`), `module.` removed, as numpy arrays."""
    sd = obj.get("state_dict", obj)
    out = {}
    for k, v in sd.items():
        if isinstance(v, TensorSpec) and v.storage.kind in ("FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage"):
            out[k.removeprefix("module.")] = v.materialise().astype(np.float32)
    return out


def show(name, sd, keys):
    total = sum(float(v.astype(np.float64).sum()) for v in sd.values())
    print(f"{name}: {len(sd)} float tensors, {sum(v.size for v in sd.values())} values, sum {total!r}")
    for k in keys:
        v = sd[k]
        first = [repr(float(x)) for x in v.reshape(-1)[:4]]
        print(f"  {k} {list(v.shape)} sum {float(v.astype(np.float64).sum())!r} first [{', '.join(first)}]")


def reference(args):
    cifar = Path(args.shared) / "data/models/cifar-resnet"
    for f in sorted(cifar.glob("resnet*.th")):
        obj, storages = read(f)
        print(f"{f.name}: top-level keys {list(obj)}, best_prec1 {obj['best_prec1']!r}, {len(storages)} storages")
        sd = state_dict(obj)
        show(f.name, sd, ["conv1.weight", "bn1.running_var", "layer3.2.bn2.bias", "linear.weight", "linear.bias"])
    if args.effl:
        for f in sorted(Path(args.effl).glob("*.pth")):
            obj, storages = read(f)
            ints = [k for k, v in obj.items() if isinstance(v, TensorSpec) and v.storage.kind == "LongStorage"]
            print(f"{f.name}: {len(obj)} entries, {len(ints)} integer tensors (e.g. {ints[:1]})")
            show(f.name, state_dict(obj), ["_conv_stem.weight", "_bn0.running_var", "_fc.weight", "_fc.bias"])
    for f in sorted((ROOT / "crates/ensembed/tests/corpus/torch").glob("*.pt")):
        try:
            obj, _ = read(f)
            sd = state_dict(obj if "model" not in obj else obj["model"])
            show(f.name, sd, [])
        except Exception as e:  # the hostile fixtures
            print(f"{f.name}: refused ({type(e).__name__}: {e})")


# ---------------------------------------------------------------------------------------------
# Writing


def fake_torch():
    """Installs fake `torch` and `torch._utils` modules so that pickle emits torch's globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils
    for name in DTYPES:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    for name in ["_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"]:
        def f(*a):
            raise AssertionError("never called")
        f.__module__, f.__name__, f.__qualname__ = "torch._utils", name, name
        setattr(utils, name, f)
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return torch


class WStorage:
    """A storage being written: its class name, key and raw little-endian bytes."""

    def __init__(self, kind, key, raw, numel):
        self.kind, self.key, self.raw, self.numel = kind, key, raw, numel


class WTensor:
    def __init__(self, storage, offset, size, stride, v2=True):
        self.storage, self.offset, self.size, self.stride, self.v2 = storage, offset, size, stride, v2

    def __reduce_ex__(self, protocol):
        u = sys.modules["torch._utils"]
        if self.v2:
            return (u._rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))
        return (u._rebuild_tensor, (self.storage, self.offset, tuple(self.size), tuple(self.stride)))


class Writer:
    """Collects storages; `tensor` adds one from a numpy array (contiguous, own storage)."""

    def __init__(self, legacy):
        self.legacy, self.storages = legacy, []

    def storage(self, kind, raw, numel):
        key = str(len(self.storages)) if not self.legacy else str(140000000 + 1000 * len(self.storages))
        s = WStorage(kind, key, raw, numel)
        self.storages.append(s)
        return s

    def tensor(self, a, kind="FloatStorage", v2=True):
        a = np.array(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        if kind == "BFloat16Storage":
            raw = (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = a.astype(DTYPES[kind]).tobytes()
        s = self.storage(kind, raw, a.size)
        stride = [int(np.prod(a.shape[i + 1:])) for i in range(a.ndim)]
        return WTensor(s, 0, list(a.shape), stride, v2)

    def pickle(self, obj):
        torch = sys.modules["torch"]
        legacy = self.legacy

        class P(pickle.Pickler):
            def persistent_id(self, o):
                if isinstance(o, WStorage):
                    t = ("storage", getattr(torch, o.kind), o.key, "cpu", o.numel)
                    return t + (None,) if legacy else t
                return None

        buf = io.BytesIO()
        P(buf, protocol=2).dump(obj)
        return buf.getvalue()

    def write(self, path, obj, counts=None, byteorder="little"):
        """`counts` overrides the element count written before a legacy storage's bytes."""
        main = self.pickle(obj)
        path = Path(path)
        if self.legacy:
            out = io.BytesIO()
            for x in [MAGIC, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}]:
                pickle.dump(x, out, protocol=2)
            out.write(main)
            pickle.dump([s.key for s in self.storages], out, protocol=2)
            for s in self.storages:
                n = s.numel if counts is None else counts.get(s.key, s.numel)
                out.write(struct.pack("<q", n))
                out.write(s.raw)
            path.write_bytes(out.getvalue())
        else:
            name = path.name.split(".")[0]
            # Fixed timestamps, so that rerunning the script reproduces the files byte for byte.
            entries = [("data.pkl", main), ("byteorder", byteorder)]
            entries += [(f"data/{s.key}", s.raw) for s in self.storages] + [("version", "3\n")]
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
                for entry, content in entries:
                    z.writestr(zipfile.ZipInfo(f"{name}/{entry}", (2020, 1, 1, 0, 0, 0)), content)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


def fixtures(args):
    fake_torch()
    out = ROOT / "crates/ensembed/tests/corpus/torch"
    out.mkdir(parents=True, exist_ok=True)

    # Real weights: conv1 and bn1 of resnet20, in both formats, wrapped as the original.
    obj, _ = read(Path(args.shared) / "data/models/cifar-resnet/resnet20-12fca82f.th")
    sd = state_dict(obj)
    for legacy, name in [(False, "resnet20-head.zip.pt"), (True, "resnet20-head.legacy.pt")]:
        w = Writer(legacy)
        head = collections.OrderedDict((f"module.{k}", w.tensor(sd[k], v2=not legacy)) for k in ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"])
        w.write(out / name, {"best_prec1": obj["best_prec1"], "state_dict": head})

    # Synthetic: every float storage type, an integer tensor, a transposed view with a storage
    # offset, two tensors sharing a storage, a numpy scalar, an argparse.Namespace, nesting
    # under `model` with DataParallel's `module.` prefix.
    w = Writer(legacy=False)
    base = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1  # exact in f16 and bf16
    shared = w.tensor(base)
    model = collections.OrderedDict()
    model["module.f32"] = shared
    # base[1:, 2:5].T: shape [3, 3], strides [1, 6], offset 8.
    model["module.view"] = WTensor(shared.storage, 8, [3, 3], [1, 6])
    model["module.f16"] = w.tensor(base[:2], "HalfStorage")
    model["module.bf16"] = w.tensor(base[2:], "BFloat16Storage")
    model["module.f64"] = w.tensor(base.astype(np.float64) * 1e-3, "DoubleStorage")
    model["module.scalar"] = w.tensor(np.array(2.5, dtype=np.float32))
    model["module.num_batches_tracked"] = w.tensor(np.array(7), "LongStorage")
    top = {
        "epoch": 3,
        "best_acc": np.float64(0.875),
        "args": argparse.Namespace(arch="resnet", lr=0.1, layers=[1, 2]),
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    }
    w.write(out / "synthetic.zip.pt", top)
    w.legacy = True
    w.storages = []
    # The same content in the legacy layout (new keys: rebuild the tensors).
    shared = w.tensor(base)
    model = collections.OrderedDict([
        ("module.f32", shared),
        ("module.view", WTensor(shared.storage, 8, [3, 3], [1, 6])),
        ("module.f16", w.tensor(base[:2], "HalfStorage")),
        ("module.bf16", w.tensor(base[2:], "BFloat16Storage")),
        ("module.f64", w.tensor(base.astype(np.float64) * 1e-3, "DoubleStorage")),
        ("module.scalar", w.tensor(np.array(2.5, dtype=np.float32))),
        ("module.num_batches_tracked", w.tensor(np.array(7), "LongStorage")),
    ])
    w.write(out / "synthetic.legacy.pt", dict(top, model=model))

    # Big-endian zip (byteorder "big", data byte-swapped).
    w = Writer(legacy=False)
    t = w.tensor(base)
    t.storage.raw = base.astype(">f4").tobytes()
    w.write(out / "big-endian.zip.pt", {"w": t}, byteorder="big")

    # Hostile: a view reaching past its storage (offset 20 + 6 elements in a 24-element one).
    w = Writer(legacy=True)
    t = w.tensor(base)
    w.write(out / "view-beyond-storage.legacy.pt", {"state_dict": {"w": WTensor(t.storage, 20, [6], [1])}})
    # Hostile: a storage whose count declares 25 elements where 24 are present (file ends).
    w = Writer(legacy=True)
    t = w.tensor(base)
    w.write(out / "storage-short.legacy.pt", {"w": t}, counts={t.storage.key: 25})
    # Hostile: `os.system` called through REDUCE in the main pickle of a legacy file.
    buf = io.BytesIO()
    for x in [MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]:
        pickle.dump(x, buf, protocol=2)
    buf.write(b"\x80\x02cos\nsystem\nq\x00X\x18\x00\x00\x00touch /tmp/ensembed-pwnd\x85R.")
    (out / "os-system.legacy.pt").write_bytes(buf.getvalue())
    print(f"wrote {out / 'os-system.legacy.pt'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["reference", "fixtures"])
    ap.add_argument("--shared", default=str(ROOT / "../shared"))
    ap.add_argument("--effl", help="folder of efficientnet-lite*.pth (see .ci/run)")
    args = ap.parse_args()
    {"reference": reference, "fixtures": fixtures}[args.command](args)


if __name__ == "__main__":
    main()
