#!/usr/bin/env sh
# Installs Graphviz's `dot` where the machine allows it (root and apt-get).
# Without it nldsl still writes DOT text and says what to install for SVG/PNG.
command -v dot >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null && exit 0
fi
echo "note: Graphviz 'dot' is not installed; diagrams fall back to DOT text." >&2
echo "      install it with: apt-get install graphviz  (or brew install graphviz)" >&2
exit 1
