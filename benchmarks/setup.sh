#!/usr/bin/env bash
# Builds the benchmark environment, .bench-venv, apart from the package's own .venv:
# the peers (titans-pytorch, flash-linear-attention) are never dependencies of nldsl.
#
#   benchmarks/setup.sh                 # then: .bench-venv/bin/python benchmarks/peers.py
#
# torch goes in FIRST and stays pinned by a constraints file (with triton at the
# package's own version): without the pin a peer's requirements would pull a
# multi-GB CUDA build of torch over the CPU one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
VENV="${VENV:-.bench-venv}"

"$PY" -m venv "$VENV"
CONSTRAINTS="$VENV/constraints.txt"
printf 'torch==2.13.0\ntriton==3.7.1\n' > "$CONSTRAINTS"
PIP=("$VENV/bin/pip" install -q -c "$CONSTRAINTS")

"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[test]'  # with the test extra: tests/test_peers.py runs here too
# Peers: one at a time, so one that fails to install does not stop the other
# (peers.py then says which is missing and why). fla's `cpu` extra brings triton,
# which `import fla.ops` needs even for its plain-torch reference functions.
for peer in titans-pytorch 'flash-linear-attention[cpu]'; do
  "${PIP[@]}" "$peer" || echo "setup: could not install $peer (see the pip output above)" >&2
done
"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "nldsl", "titans-pytorch", "flash-linear-attention", "fla-core", "triton"):
    try:
        print(f"{name:24s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:24s} not installed")
PYEOF
