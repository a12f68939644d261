#!/usr/bin/env python3
"""Makes a smaller image folder of symbolic links: the first N files (sorted by name) of every
class folder of an ImageFolder (`DIR/<class>/<image>`), the same selection rule as the demo
sample and as `ensembed subset --per-class`, so a reduced-scale experiment can be extracted
without copying images.

    python3 scripts/image_subset.py SRC_DIR OUT_DIR N
"""
import os
import sys
from pathlib import Path

src, out, n = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
for cls in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
    (out / cls.name).mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in cls.iterdir() if p.is_file())[:n]:
        link = out / cls.name / f.name
        if not link.exists():
            os.symlink(f, link)
print(f"linked the first {n} images of each class of {src} under {out}")
