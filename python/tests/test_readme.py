"""The README's example runs as written (from a directory holding the demo data, as the
repository root does)."""

import os
import re
import subprocess
import sys

from conftest import DEMO, REPO

import pytest


def test_readme_example_runs(tmp_path):
    if not DEMO.exists():
        pytest.skip(f"demo data not found at {DEMO}")
    text = (REPO / "python" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no python example"
    (tmp_path / "data").symlink_to(REPO / "data")
    env = {**os.environ, "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "2")}
    for code in blocks:
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert "'ours'" in p.stdout
    assert (tmp_path / "out" / "demo-model" / "fit.json").exists()
