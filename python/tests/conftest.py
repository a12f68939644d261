"""Shared fixtures: small slices of the shipped demo data (real CIFAR-10 features of three
MobileNetV2 backbones, float16) and the CLI binary, when it has been built."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
NAMES = ["mnv2-imagenet", "mnv2-tf2-imagenet", "mnv2-inat-bird"]

# `python -m pytest` run inside python/ puts python/ on sys.path, where ensembed/ is the source
# tree without the compiled extension (unless `maturin develop` put it there): test the
# installed package instead.
_SRC = Path(__file__).resolve().parents[1]
if not any(p.suffix in (".so", ".pyd") for p in (_SRC / "ensembed").glob("_ensembed*")):
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _SRC]


def _load(split, step):
    z = np.load(DEMO / f"{split}.npz")
    return {n: z[n][::step] for n in NAMES}, z["labels"][::step]


@pytest.fixture(scope="session")
def demo():
    """(train feats dict, train labels, test feats dict, test labels): 250 train rows and 100
    test rows, every class present, float16 [n, 1280] as shipped."""
    if not DEMO.exists():
        pytest.skip(f"demo data not found at {DEMO}")
    tr, ytr = _load("train", 4)
    te, yte = _load("test", 5)
    return tr, ytr, te, yte


@pytest.fixture(scope="session")
def cli():
    """Path of the `ensembed` binary: $ENSEMBED_CLI, else target/release/ensembed of the repo,
    else `ensembed` on PATH. Tests that need it are skipped, with the reason shown, without it."""
    cands = [os.environ.get("ENSEMBED_CLI"), str(REPO / "target" / "release" / "ensembed"), shutil.which("ensembed")]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.skip(
        "the ensembed CLI binary is not built (run `cargo build --release -p ensembed-cli` at the "
        "repository root, or set ENSEMBED_CLI): CLI parity tests skipped"
    )
