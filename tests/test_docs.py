"""The documentation site (`tools/build_docs.py`): sidebar grouping, notebook cleaning, and the built site in Chromium.

The browser test serves the built site from a local static server on 127.0.0.1 and opens its home page and
the API page of `cropkit.core` in headless Chromium (every request that does not go to that server is
refused). It reuses `_site/` when that is a complete build newer than every notebook (`bash tools/docs.sh`,
which `tools/test.sh` runs before pytest), else it builds a site into a temporary folder.
"""
from __future__ import annotations

import functools, http.server, importlib.util, inspect, json, os, shutil, sys, threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402
from build_docs import clean_notebook, collect, layer_of  # noqa: E402

CHROMIUM = os.environ.get("CROPKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CROPKIT_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


# ------------------------------------------------------------------------------------------------ sidebar
@pytest.mark.parametrize("stem, group", [
    ("00_core", "Core"), ("01_data.breizhcrops", "Data"), ("09_data", "Data"),
    ("19a_models.h2crop_swin", "Models"), ("18_models.registry", "Models"),
    ("20_train", "Training"), ("21_metrics", "Training"), ("26_recipes", "Training"),
    ("30_viz.maps", "Visualisation"), ("34_viz", "Visualisation"),       # today's numbers: the name decides
    ("50_viz.maps", "Visualisation"),                                       # after the lead's rename
    ("30_evaluate.metrics", "Evaluation"), ("32_evaluate.area", "Evaluation"), ("31_seg_metrics", "Evaluation"),
    ("40_geo.cube", "Geo"), ("46_geo.postprocess", "Geo"),
    ("25_cli", "Command line"), ("60_cli", "Command line"), ("61_cli.h2crop", "Command line"),
    ("70_compat.breizhcrops", "Compatibility"),
    ("90_tutorial.victoria", "Tutorials"), ("95_how_to", "Tutorials"),
    ("85_misc", "Other"), ("notes", "Other"),
])
def test_layer_of(stem, group):
    assert layer_of(stem) == group


def _nb(*cells):
    return {"cells": [{"cell_type": t, "metadata": {}, "source": s, **({"outputs": []} if t == "code" else {})}
                      for t, s in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_clean_notebook_strips_nbdev_machinery():
    nb = _nb(("markdown", "# Title\n\n> summary"), ("code", "#| default_exp data.__init__"),
             ("code", "#| export\ndef f(x):\n    \"Docstring of f.\"\n    return x"),
             ("code", "#| hide\nsecret = 1"), ("code", "#|echo: false\nshown_output()"),
             ("code", "#| output: false\nnoisy()"), ("code", "x = 1\n#| not a directive here"))
    nb["cells"][5]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "noise"}]
    clean, module = clean_notebook(nb)
    assert module == "data"
    sources = [c["source"] for c in clean["cells"]]
    assert sources == ["# Title\n\n> summary", 'def f(x):\n    "Docstring of f."\n    return x', "shown_output()",
                       "noisy()", "x = 1\n#| not a directive here"]
    assert clean["cells"][2]["metadata"]["tags"] == ["remove_input"]
    assert clean["cells"][3]["outputs"] == []
    assert nb["cells"][5]["outputs"], "the input notebook is left unchanged"


def test_collect_groups_renamed_and_new_notebooks(tmp_path):
    "The sidebar follows the notebook names: no configuration lists them."
    nbs, src = tmp_path / "nbs", tmp_path / "src"
    nbs.mkdir(); src.mkdir()
    pages = {"index": "# Home", "00_core": "# core", "50_viz.maps": "# Maps", "30_evaluate.area": "# Area",
             "61_cli.geo": "# Geo commands", "91_tutorial.x": "# Tutorial X", "88_scratch": "# Scratch"}
    for stem, title in pages.items():
        exp = [] if stem in ("index", "91_tutorial.x", "88_scratch") else [("code", f"#| default_exp {stem.split('_', 1)[1]}")]
        (nbs / f"{stem}.ipynb").write_text(json.dumps(_nb(("markdown", title), *exp,
                                                          ("code", "#| export\ndef g():\n    \"G.\"\n    pass"))))
    nav = collect(nbs, src)["nav"]
    assert nav[0] == {"Home": "index.ipynb"}
    groups = {k: v for item in nav[1:] for k, v in item.items()}
    assert list(groups) == ["Core", "Evaluation", "Visualisation", "Command line", "Tutorials", "Other", "API reference"]
    assert groups["Visualisation"] == [{"Maps": "50_viz.maps.ipynb"}]
    assert groups["Other"] == [{"Scratch": "88_scratch.ipynb"}]
    api = {k: v for item in groups["API reference"] for k, v in item.items()}
    assert api["Evaluation"] == [{"cropkit.evaluate.area": "api/evaluate.area.md"}]
    assert "::: cropkit.viz.maps" in (src / "api" / "viz.maps.md").read_text()
    cleaned = json.loads((src / "50_viz.maps.ipynb").read_text())
    assert "#|" not in json.dumps(cleaned)
    assert "api/viz.maps.html" in cleaned["cells"][-1]["source"] and "`g`" in cleaned["cells"][-1]["source"]


def test_collect_refuses_a_broken_notebook(tmp_path):
    (tmp_path / "index.ipynb").write_text(json.dumps(_nb(("markdown", "# Home"))))
    (tmp_path / "01_data.x.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match=r"01_data\.x\.ipynb: not a readable notebook"):
        collect(tmp_path, tmp_path / "src")
    (tmp_path / "01_data.x.ipynb").unlink(); (tmp_path / "index.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        collect(tmp_path, tmp_path / "src2")


def test_build_refuses_to_replace_a_foreign_folder(tmp_path):
    "An --out folder that is not a docs site is never replaced without --overwrite."
    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir(); out.mkdir(); (out / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a cropkit docs site"):
        build_docs._replace_dir(new, out, overwrite_any=False)
    assert (out / "thesis.tex").read_text() == "keep me"
    (new / "index.html").write_text("site"); (out / build_docs.MARKER).write_text("")
    build_docs._replace_dir(new, out, overwrite_any=False)
    assert (out / "index.html").read_text() == "site" and not new.exists()


# ------------------------------------------------------------------------------------------------ browser
def _missing_requirement() -> str | None:
    for mod in ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            return f"{mod} is not installed (docs extra: pip install -e '.[docs]')"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (it is in cropkit's dev extras: pip install -e '.[dev]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CROPKIT_CHROMIUM to a chromium binary)"
    return None


def _fresh_site() -> Path | None:
    "`_site/` when it is a complete build newer than every notebook, else None."
    site = ROOT / "_site"
    marker = site / build_docs.MARKER
    if not marker.is_file(): return None
    newest = max(p.stat().st_mtime for p in (ROOT / "nbs").glob("*.ipynb"))
    return site if marker.stat().st_mtime >= newest else None


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    why = _missing_requirement()
    if why: pytest.skip(why)
    site = _fresh_site() or build_docs.build(tmp_path_factory.mktemp("docs") / "_site")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown(); server.server_close(); thread.join(5)


@pytest.mark.browser
def test_site_in_chromium(site_url):
    from playwright.sync_api import sync_playwright
    from cropkit.core import get_device

    failed, refused = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            def local_only(route):
                if route.request.url.startswith(site_url): route.continue_()
                else: refused.append(route.request.url); route.abort()
            context.route("**/*", local_only)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

            # home page: built from nbs/index.ipynb, with the sidebar grouped by layer
            page.goto(f"{site_url}/index.html")
            assert page.title() == "cropkit"
            assert page.locator("article h1").first.inner_text().strip() == "cropkit"
            assert page.locator("article", has_text="Two commands for a fresh machine").count() == 1
            groups = [t.strip() for t in page.locator(".md-nav--primary .md-nav__item--section > label").all_inner_texts()]
            for g in ("Core", "Data", "Models", "Training", "Visualisation", "Command line", "Tutorials", "API reference"):
                assert g in groups, f"sidebar group {g!r} missing from {groups}"
            assert groups.index("Data") < groups.index("Models") < groups.index("Tutorials") < groups.index("API reference")
            data = page.locator(".md-nav--primary .md-nav__item--section", has=page.locator("> label", has_text="Data")).first
            assert data.locator("a", has_text="BreizhCrops").count() >= 1

            # the notebook page: stored outputs shown, nbdev directives gone
            page.goto(f"{site_url}/00_core.html")
            assert page.title() == "core - cropkit"
            text = page.locator("article").inner_text()
            assert "def get_device(" in text and "#| export" not in text and "default_exp" not in text
            page.locator("article a", has_text="cropkit.core").first.click()

            # the API page of cropkit.core, reached from the notebook: signature and docstring
            page.wait_for_url(f"{site_url}/api/core.html")
            assert page.title() == "cropkit.core - cropkit"
            heading = page.locator('article h2[id="cropkit.core.get_device"]')
            assert heading.inner_text().strip() == "get_device"
            api_text = page.locator("article").inner_text()
            assert "get_device(device:" in api_text
            assert inspect.getdoc(get_device).replace("`", "") in api_text.replace("`", "")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs-api-core.png"))
        finally:
            browser.close()
    assert not failed, f"the site requested missing files: {failed[:5]}"
