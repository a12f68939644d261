#!/usr/bin/env python3
"""ONNX models written by the official `onnx` package, for ensembed's ONNX reader to be checked
against a serialiser it does not share code with (crates/ensembed/tests/it/onnx.rs).

  python3 scripts/onnx_package_models.py OUTDIR [--efficientnet-lite0 X.pth]

Writes OUTDIR/resnet50.onnx (torchvision's ResNet-50 layout, random weights, BatchNormalization
nodes unfolded, Conv without bias, opset 13) and, with --efficientnet-lite0, OUTDIR/lite0.onnx
(the real EfficientNet-Lite0 weights; explicit asymmetric pads for TensorFlow's SAME, depthwise
Conv, Clip as ReLU6). Both end in GlobalAveragePool + Flatten, the graph output. The graphs are
the ones scripts/cnn_onnx_bench.py times.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cnn_onnx_bench  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--efficientnet-lite0")
a = ap.parse_args()
out = Path(a.out)
cnn_onnx_bench.resnet50(str(out / "resnet50.onnx"))
if a.efficientnet_lite0:
    cnn_onnx_bench.efficientnet_lite(str(out / "lite0.onnx"), a.efficientnet_lite0, 224)
