#!/usr/bin/env bash
# Builds and tests the Python package; .ci/run can call it after the Rust tests.
#   python/ci.sh                  # from anywhere
# Installs maturin and pytest with pip, builds the CLI (for the CLI-parity tests; a no-op when
# `cargo test --release --workspace` or `cargo build --release` already built it; set
# ENSEMBED_SKIP_CLI=1 to skip it and those tests), builds and installs the package, runs pytest.
# Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore

"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" "pytest>=7" "numpy>=1.21,<2"

if [[ "${ENSEMBED_SKIP_CLI:-0}" != 1 ]]; then
    (cd "$root" && cargo build --release --quiet -p ensembed-cli)
    export ENSEMBED_CLI="$root/target/release/ensembed"
fi

# The extension's own target dir (python/target) keeps the workspace's build lock free.
"$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps "$here"

cd "$root"
"$py" -m pytest "$here/tests" -q -rs
