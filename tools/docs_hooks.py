"""MkDocs hooks for the cropkit docs site (used by tools/build_docs.py).

mkdocs-jupyter inlines the same ~570 kB JupyterLab stylesheet into every notebook page. These hooks move
each large inline stylesheet into one shared file under `assets/` and link it instead: pages get ~15 times
smaller and MkDocs' search indexer, which parses every page, gets through them much faster.
"""
from __future__ import annotations

import hashlib, posixpath, re
from pathlib import Path

LARGE = 20_000                    # bytes: inline stylesheets above this size are shared
STYLE = re.compile(r'<style type="text/css">(.*?)</style>', re.S)
_shared: dict[str, str] = {}      # file name -> css


def on_pre_build(config):
    _shared.clear()


def on_page_content(html, page, config, files):
    if not page.file.src_path.endswith(".ipynb"): return html
    depth = posixpath.dirname(page.file.dest_uri)
    prefix = posixpath.relpath("assets", depth or ".")
    def share(m):
        css = m.group(1)
        if len(css) < LARGE: return m.group(0)
        name = f"notebook-{hashlib.sha256(css.encode()).hexdigest()[:12]}.css"
        _shared[name] = css
        return f'<link rel="stylesheet" href="{prefix}/{name}">'
    return STYLE.sub(share, html)


def on_post_build(config):
    folder = Path(config["site_dir"]) / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, css in _shared.items(): (folder / name).write_text(css, encoding="utf-8")
