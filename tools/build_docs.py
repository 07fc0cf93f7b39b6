"""Build the documentation site into `_site/` from the notebooks (stored outputs, never executed) and the docstrings.

    python tools/build_docs.py            # or: bash tools/docs.sh
    python tools/build_docs.py --out /tmp/site --clean

Steps: every `nbs/*.ipynb` is copied into `build/docs/src/` without its nbdev machinery (cells flagged
`#| hide` are dropped, `#| ...` directive lines are removed from the others, `#| echo: false` hides a cell's
input, `#| output: false` its outputs); an API page per exported module (`::: cropkit.x` for mkdocstrings,
which reads the docstrings and signatures from the source without importing it) is written next to them;
a `mkdocs.yml` whose sidebar groups the pages by layer is generated; then MkDocs (Material theme,
mkdocs-jupyter for the notebooks, mkdocstrings-python for the API) writes the site. The site replaces
`_site/` only once it is complete.

The sidebar is computed, never edited by hand: a notebook goes to the layer its module path names
(`30_viz.maps` -> Visualisation, `25_cli` -> Command line) and otherwise to the layer of its number
(`21_metrics` -> Training until it is renamed `30_evaluate.metrics` -> Evaluation); see `LAYERS`.
A notebook whose number no layer claims lands in "Other", so nothing ever drops out of the site.
Needs the docs extra: `pip install -e ".[docs]"`.
"""
from __future__ import annotations

import argparse, ast, base64, html, json, os, re, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE_NAME = "cropkit"
MARKER = ".cropkit-docs"          # written into the site folder: only such a folder is replaced

# (title, first number, last number, module-path words that name the layer)
LAYERS = [
    ("Core", 0, 0, ("core",)),
    ("Data", 1, 9, ("data",)),
    ("Models", 10, 19, ("models",)),
    ("Training", 20, 29, ("train",)),
    ("Evaluation", 30, 39, ("evaluate",)),
    ("Geo", 40, 49, ("geo",)),
    ("Visualisation", 50, 59, ("viz",)),
    ("Command line", 60, 69, ("cli",)),
    ("Compatibility", 70, 79, ("compat",)),
    ("Tutorials", 90, 99, ("tutorial", "tutorials")),
]
OTHER = "Other"
NB_NAME = re.compile(r"^(\d+)([a-z]*)_(.+)$")
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")


# ----------------------------------------------------------------------------------------------- sidebar
def layer_of(stem: str) -> str:
    "Sidebar group of notebook `stem` (no `.ipynb`): the layer its module path names, else its number's layer."
    m = NB_NAME.match(stem)
    if not m: return OTHER
    number, rest = int(m.group(1)), m.group(3)
    first = rest.split(".")[0].lower()
    for title, _, _, words in LAYERS:
        if first in words: return title
    for title, lo, hi, _ in LAYERS:
        if lo <= number <= hi: return title
    return OTHER


def sort_key(stem: str) -> tuple:
    "Order inside a group: number, letter suffix (`19a` after `19`), name."
    m = NB_NAME.match(stem)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else (10**6, "", stem)


def group_order() -> list[str]:
    return [t for t, *_ in LAYERS] + [OTHER]


# ----------------------------------------------------------------------------------------------- notebooks
def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _directives(src: str) -> tuple[dict[str, str], str]:
    "Leading `#| name: value` lines of a code cell as {name: value}, and the source without them."
    found, lines = {}, src.splitlines()
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if m: found[m.group(1).lower()] = m.group(2).lower()
        elif lines[i].strip(): break
        i += 1
    return found, "\n".join(lines[i:]).strip("\n")


def clean_notebook(nb: dict) -> tuple[dict, str | None]:
    "Notebook `nb` as the site shows it (no hidden cells, no directives), and its `default_exp` module (or None)."
    module, cells = None, []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            cells.append(cell)
            continue
        flags, body = _directives(_source(cell))
        if "default_exp" in flags:
            module = module or re.sub(r"\.__init__$", "", flags["default_exp"].split()[0])
        if "hide" in flags or "exporti" in flags or not body.strip(): continue
        cell = dict(cell, source=body, metadata=dict(cell.get("metadata", {})))
        if flags.get("echo") == "false":
            cell["metadata"]["tags"] = sorted(set(cell["metadata"].get("tags", [])) | {"remove_input"})
        if flags.get("output") == "false": cell["outputs"] = []
        cells.append(cell)
    return dict(nb, cells=cells), module


def extract_images(nb: dict, folder: Path, stem: str, title: str) -> int:
    "Move the PNG/JPEG outputs of `nb` into files under `folder` (pages stay small, search indexes fast)."
    n = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            mime = next((m for m in ("image/png", "image/jpeg") if m in data), None)
            if mime is None or "text/html" in data: continue
            payload = data[mime]
            payload = "".join(payload) if isinstance(payload, list) else payload
            n += 1
            name = f"{stem}-{n}.{mime.split('/')[1].replace('jpeg', 'jpg')}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(base64.b64decode(payload))
            alt = html.escape(f"figure {n} of {title}", quote=True)
            out["data"] = {"text/html": f'<img src="{folder.name}/{name}" alt="{alt}">'}
    return n


def notebook_title(nb: dict, fallback: str) -> str:
    "The first level-1 heading of the notebook's markdown cells."
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            m = re.search(r"(?m)^#\s+(.+?)\s*$", _source(cell))
            if m: return m.group(1)
    return fallback


def _exported_names(nb: dict) -> list[str]:
    "Public functions and classes defined in the `#| export` cells (for the link to the API page)."
    names = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code": continue
        flags, body = _directives(_source(cell))
        if "export" not in flags: continue
        try: tree = ast.parse(body)
        except SyntaxError: continue
        names += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and not n.name.startswith("_")]
    return names


def _api_link_cell(module: str, names: list[str]) -> dict:
    listed = ", ".join(f"`{n}`" for n in names[:12]) + (", ..." if len(names) > 12 else "")
    # notebook pages are HTML by the time MkDocs resolves links: link the API page's output file
    text = f"**API reference:** [`cropkit.{module}`](api/{module}.html)" + (f" ({listed})" if names else "")
    return {"cell_type": "markdown", "id": "cropkit-docs-api-link", "metadata": {}, "source": text}


# ----------------------------------------------------------------------------------------------- site source
def collect(nbs: Path, src: Path) -> dict:
    "Write the cleaned notebooks and API pages into `src`; return the sidebar as {group: [(title, path)]}."
    groups: dict[str, list] = {g: [] for g in group_order()}
    api: dict[str, list] = {g: [] for g in group_order()}
    home = None
    notebooks = sorted(nbs.glob("*.ipynb"), key=lambda p: sort_key(p.stem))
    if not notebooks: raise FileNotFoundError(f"no notebooks in {nbs}")
    for path in notebooks:
        try: nb = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable notebook ({e}); fix or remove it") from e
        clean, module = clean_notebook(nb)
        title = notebook_title(clean, path.stem)
        if path.stem == "index":
            home = (title, "index.ipynb")
        elif module:
            clean["cells"].append(_api_link_cell(module, _exported_names(nb)))
        extract_images(clean, src / "img", path.stem, title)
        (src / path.name).write_text(json.dumps(clean), encoding="utf-8")
        if path.stem == "index": continue
        group = layer_of(path.stem)
        groups[group].append((title, path.name))
        if module:
            page = src / "api" / f"{module}.md"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(f"# cropkit.{module}\n\nFrom the notebook [{title}](../{path.name}).\n\n"
                            f"::: cropkit.{module}\n", encoding="utf-8")
            api[group].append((f"cropkit.{module}", f"api/{module}.md"))
    if home is None: raise FileNotFoundError(f"{nbs / 'index.ipynb'} is missing: it is the site's home page")
    nav = [{"Home": home[1]}]
    nav += [{g: [{t: p} for t, p in pages]} for g, pages in groups.items() if pages]
    nav.append({"API reference": [{g: [{t: p} for t, p in pages]} for g, pages in api.items() if pages]})
    return {"nav": nav, "home": home}


def mkdocs_config(src: Path, site: Path, cache: Path, nav: list) -> dict:
    return {
        "site_name": SITE_NAME,
        "site_description": "A notebook-first research toolkit for crop-type classification from satellite data.",
        "docs_dir": str(src), "site_dir": str(site), "use_directory_urls": False,
        "theme": {"name": "material", "font": False,             # no web fonts: the site works offline
                  "features": ["navigation.sections", "navigation.top", "toc.follow", "search.highlight"]},
        "nav": nav,
        "hooks": [str(ROOT / "tools" / "docs_hooks.py")],
        "markdown_extensions": ["admonition", "attr_list", "tables", "toc", "pymdownx.superfences",
                                {"pymdownx.highlight": {"use_pygments": True}}],
        "plugins": [
            "search",
            {"mkdocs-jupyter": {"execute": False, "include": ["*.ipynb"], "include_source": False,
                                "include_requirejs": False, "allow_errors": True, "no_prompt": True, "cache": True,
                                "cache_dir": str(cache), "toc_depth": 3,
                                "remove_tag_config": {"remove_input_tags": ["remove_input"]}}},
            {"mkdocstrings": {"default_handler": "python", "handlers": {"python": {
                "paths": [str(ROOT)],
                "options": {"show_source": False, "show_root_heading": False, "show_root_toc_entry": False,
                            "members_order": "source", "filters": ["!^_"], "heading_level": 2,
                            "separate_signature": True, "show_signature_annotations": True,
                            "docstring_style": "google", "show_if_no_docstring": True,
                            "show_submodules": False}}}}},
        ],
    }


def _replace_dir(new: Path, out: Path, overwrite_any: bool) -> None:
    "Move the finished site `new` to `out`, replacing an earlier site (never another folder unless asked)."
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()) and not overwrite_any:
            raise FileExistsError(f"{out} exists and is not a cropkit docs site; remove it or pass --overwrite")
        old = out.with_name(out.name + ".old")
        if old.exists(): shutil.rmtree(old)
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)
    else:
        os.replace(new, out)


def build(out: Path = ROOT / "_site", nbs: Path = ROOT / "nbs", work: Path = ROOT / "build" / "docs",
          clean: bool = False, overwrite: bool = False, quiet: bool = True) -> Path:
    "Build the site into `out`; returns `out`."
    try:
        import yaml
        from mkdocs.commands.build import build as mkdocs_build
        from mkdocs.config import load_config
        import mkdocs_jupyter, mkdocstrings, material  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{e.name} is missing: the docs need the docs extra, pip install -e \".[docs]\"") from e
    import logging
    out, work = Path(out).resolve(), Path(work).resolve()
    if clean and work.exists(): shutil.rmtree(work)
    src = work / "src"
    if src.exists(): shutil.rmtree(src)
    src.mkdir(parents=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_site = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        info = collect(Path(nbs), src)
        cfg_path = work / "mkdocs.yml"
        cfg_path.write_text(yaml.safe_dump(mkdocs_config(src, tmp_site, work / "cache", info["nav"]),
                                           sort_keys=False, allow_unicode=True), encoding="utf-8")
        for name in ("mkdocs", "mkdocs_autorefs", "mkdocstrings", "griffe", "mkdocs_jupyter"):
            logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)
        if not quiet and not logging.getLogger().handlers: logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        mkdocs_build(load_config(str(cfg_path)))
        (tmp_site / MARKER).write_text("built by tools/build_docs.py\n")
        _replace_dir(tmp_site, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp_site, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "_site", help="site folder (default: _site/)")
    p.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="notebook folder (default: nbs/)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "docs", help="build folder (sources, cache)")
    p.add_argument("--clean", action="store_true", help="drop the conversion cache first")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a docs site")
    p.add_argument("--verbose", action="store_true", help="show MkDocs' warnings (unresolved links, ...)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = build(a.out, a.nbs, a.work, clean=a.clean, overwrite=a.overwrite, quiet=not a.verbose)
    except (ImportError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"build_docs: {e}", file=sys.stderr)
        return 1
    pages = sum(1 for _ in out.rglob("*.html"))
    print(f"built {pages} pages into {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
