#!/usr/bin/env python3
"""Pack the image sample that `ensembed demo` extracts, fits and compares (data/demo/).

  data/demo/images.zip   the 1,000 train + 500 test CIFAR-10 JPEGs of the shipped demo
                         features (data/demo/{train,test}_ids.txt: the first 100 train and 50
                         test images of each class), stored uncompressed (JPEGs do not shrink)
                         as train/<class>/NNNN.jpg and test/<class>/NNNN.jpg
  data/demo/models/      the three smallest coral MobileNetV1s (Apache-2.0, LICENSE beside them):
                         mobilenet_v1_0.25_128_quant.tflite (256-d), mobilenet_v1_0.5_160_quant
                         (512-d), mobilenet_v1_0.75_192_quant (768-d)

The archive is reproducible: entries sorted, fixed timestamps and permissions.
Usage: scripts/make_demo_images.py [SHARED_DIR]   (default ../shared)
"""
import pathlib
import shutil
import sys
import zipfile

root = pathlib.Path(__file__).resolve().parent.parent
shared = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else root.parent / "shared")
demo = root / "data" / "demo"
ids = []
for split in ("train", "test"):
    ids += (demo / f"{split}_ids.txt").read_text().split()
out = demo / "images.zip"
tmp = out.with_suffix(".zip.tmp")
with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
    for name in sorted(ids):
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        z.writestr(info, (shared / "data" / "cifar10" / name).read_bytes())
tmp.replace(out)
models = demo / "models"
models.mkdir(exist_ok=True)
coral = shared / "data" / "models" / "coral"
for f in ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "LICENSE"):
    shutil.copyfile(coral / f, models / f)
print(f"wrote {out} ({out.stat().st_size} bytes, {len(ids)} images) and {models}")
