#!/usr/bin/env bash
# Builds the documentation site into _site/ from nbs/ (stored outputs, never executed) and the docstrings.
# Needs the docs extra: pip install -e ".[docs]". Options: see `python tools/build_docs.py --help`.
# Open _site/index.html in a browser, or serve it: python -m http.server -d _site -b 127.0.0.1 8000
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/build_docs.py "$@"
