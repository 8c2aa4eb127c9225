# One command per job; each builds the virtual environment it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-slow diagrams editors docs clean gpu-check

setup: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build on this disk; anything looser
# pulls a multi-GB CUDA build. Then the package itself with its test extras, under a
# constraints file that holds torch and triton where they are.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q triton==3.7.1 numpy
	printf 'torch==2.13.0\ntriton==3.7.1\n' > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e '.[test]'
	@command -v dot >/dev/null 2>&1 || ./scripts/install-graphviz.sh || true
	touch $(STAMP)

# The main job: check HOPE, print its level hierarchy and costs, draw it, then
# train it for about two minutes on the English text that ships inside Python
# (held-out loss at the start and end, loss curve, checkpoint, a sample).
demo: setup
	$(BIN)/nldsl check examples/hope.nl
	$(BIN)/nldsl ir examples/hope.nl --levels
	$(BIN)/nldsl stats examples/hope.nl
	@mkdir -p out
	$(BIN)/nldsl graph examples/hope.nl -o out/hope.svg || echo "(the diagram was written as DOT text: out/hope.dot)"
	rm -rf out/hope
	$(BIN)/nldsl train examples/hope.nl --set dim=96 --set context=128 --steps 150 --eval-every 50 --out out/hope

# The suite on every core: one pytest worker a core (pytest-xdist), each worker's torch on
# one thread (tests/conftest.py), a test taken by whichever worker is free.
test: setup
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n auto --dist worksteal

# The slow tests alone (pyproject.toml's `slow` marker): every model example trains 20
# steps at dim 96.
test-slow: setup
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n auto --dist worksteal -m slow

# Regenerate the diagrams the docs show.
diagrams: setup
	$(BIN)/nldsl graph examples/hope.nl -o docs/img/hope.svg
	$(BIN)/nldsl graph examples/hope.nl -o docs/img/hope.png

# Regenerate the TextMate grammar of editors/vscode from grammar/nl.lark and nldsl/vocab.py.
editors: setup
	$(BIN)/python -m nldsl.highlight --textmate > editors/vscode/syntaxes/nl.tmLanguage.json

# The documentation site (MkDocs, Material) into site/, offline; a warning is an error.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist *.egg-info site

# On a machine with CUDA only: the kernels on the GPU, a bf16 training run with the
# kernels on, the GPU peer comparison, titans compiled with CUDA graphs,
# hope/titans/gated_deltanet fused against reference; a summary in out/gpu-check/SUMMARY.md.
gpu-check: setup
	./scripts/gpu-check.sh
