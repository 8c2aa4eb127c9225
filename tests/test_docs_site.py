"""The documentation site (mkdocs.yml) builds as `make docs` builds it, with every
warning an error (a broken link or anchor, a page left out of the nav, an API object
that cannot be found), and shows what it promises: `.nl` examples highlighted by
nldsl's lexer, the diagram, a search index holding the diagnostics' codes, and the
API reference from the docstrings."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the `docs` extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="the `docs` extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python", reason="the `docs` extra is not installed")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_nl_examples_are_highlighted_by_the_lexer(site):
    page = (site / "language.html").read_text(encoding="utf-8")
    # `model tiny {` of §3: a keyword, the model's name, a setting, all in spans of their own
    assert re.search(r'<span class="k">model</span><span class="w"> </span><span class="nc">tiny</span>', page)
    assert '<span class="vg">vocab</span>' in page
    assert '<span class="kt">mlp</span>' in page  # a memory kind, from nldsl/vocab.py


def test_the_diagram_is_shown(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    (src,) = re.findall(r'<img alt="[^"]*" src="([^"]+)"', index)
    assert (site / src).is_file() and (ROOT / "docs" / src).is_file()


def test_the_diagnostics_are_searchable(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    codes = {c for doc in index["docs"] if doc["location"].startswith("diagnostics.html")
             for c in re.findall(r"\bNL\d{3}\b", doc["title"])}
    written = set(re.findall(r"^### (NL\d{3})", (ROOT / "docs" / "diagnostics.md").read_text(), re.M))
    assert written and written <= codes


def test_the_api_reference_comes_from_the_docstrings(site):
    import nldsl

    page = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", (site / "api.html").read_text(encoding="utf-8"))))
    for name in nldsl.__all__:  # what `import nldsl` exports, each with its docstring
        assert f"nldsl.{name}" in page, name
        first = " ".join(getattr(nldsl, name).__doc__.replace("`", "").split()[:8])
        assert first in page, name
    assert "inner_clip: float | None = None" in page  # a signature, read from nldsl/api.py


def test_the_site_needs_nothing_from_the_network(site):
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, page.name
