"""The Victoria tutorial, run through JupyterLab's own UI in a real (headless) Chromium.

A throw-away JupyterLab server (127.0.0.1, a free port, a random token, its own config/data/runtime/settings
folders and a kernelspec pinned to this interpreter) serves a copy of `nbs/90_tutorial.victoria.ipynb`.
Playwright opens it, clicks Run > Run All Cells, waits for the kernel to go idle, then checks that:

- every code cell ran, no cell shows an error, and the kernel was this virtual environment's python;
- the figures were rendered as images, and the folium map's iframe drew its Leaflet map with the parcels and
  is exactly as tall as the map (no blank band under it), which is not squeezed.

Screenshots go to `tests/artifacts/` (git-ignored; `CROPKIT_TEST_ARTIFACTS` changes the folder).

Offline machines: folium's HTML loads Leaflet from a CDN. The test serves a local copy of Leaflet instead
(`CROPKIT_LEAFLET_DIR`, else `~/.cache/cropkit/leaflet-<version>`, else fetched once with `npm pack` from
the npm registry); every other request that does not go to the local server is refused, so the test never
waits on the network. Without any Leaflet copy the map's drawing is not checked (a warning says so).
`CROPKIT_BROWSER_NOTEBOOK=path.ipynb` runs another notebook the same way; `CROPKIT_CHROMIUM` picks the browser.
"""
from __future__ import annotations

import json, os, re, secrets, shutil, signal, socket, subprocess, sys, tarfile, time, urllib.request, warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = Path(os.environ.get("CROPKIT_BROWSER_NOTEBOOK", ROOT / "nbs" / "90_tutorial.victoria.ipynb"))
ARTIFACTS = Path(os.environ.get("CROPKIT_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM = os.environ.get("CROPKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
MARKER = "CROPKIT_KERNEL_EXECUTABLE="
RUN_TIMEOUT_S = float(os.environ.get("CROPKIT_BROWSER_RUN_TIMEOUT", 200))

def _missing_requirement() -> str | None:
    "Why this test cannot run here (None when it can)."
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "playwright is not installed (it is in cropkit's dev extras: pip install -e '.[dev]')"
    try: import jupyterlab, ipykernel  # noqa: F401
    except ImportError as e: return f"{e.name} is not installed (pip install -e '.[dev]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CROPKIT_CHROMIUM to a chromium binary)"
    if not NOTEBOOK.is_file(): return f"notebook {NOTEBOOK} does not exist"
    return None


# ------------------------------------------------------------------------------------------------ Leaflet
def _leaflet_version() -> str:
    "The Leaflet version folium's HTML asks for (folium's default JS list)."
    try:
        import folium.folium
        url = dict(folium.folium._default_js)["leaflet"]
        return re.search(r"leaflet@([\d.]+)/", url).group(1)
    except Exception: return "1.9.3"


def _leaflet_dir(version: str) -> tuple[Path | None, str]:
    "(folder holding leaflet.js and leaflet.css, where it came from) or (None, why not)."
    env = os.environ.get("CROPKIT_LEAFLET_DIR")
    candidates = [Path(env), Path(env) / "dist", Path(env) / "package" / "dist"] if env else []
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cropkit" / f"leaflet-{version}"
    candidates.append(cache / "package" / "dist")
    for c in candidates:
        if (c / "leaflet.js").is_file() and (c / "leaflet.css").is_file(): return c, str(c)
    npm = shutil.which("npm")
    if npm is None: return None, "no local Leaflet copy and no npm to fetch one"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([npm, "pack", f"leaflet@{version}", "--silent"], cwd=cache, capture_output=True,
                             text=True, timeout=120)
        tgz = cache / (out.stdout.strip().splitlines() or ["?"])[-1]
        if out.returncode != 0 or not tgz.is_file():
            return None, f"`npm pack leaflet@{version}` failed: {(out.stderr or out.stdout).strip()[-300:]}"
        with tarfile.open(tgz) as tar:
            bad = [m.name for m in tar.getmembers() if m.name.startswith(("/", "..")) or "/../" in m.name]
            if bad: return None, f"{tgz.name} holds unsafe paths {bad[:3]}"
            if hasattr(tarfile, "data_filter"): tar.extractall(cache, filter="data")
            else: tar.extractall(cache)
        tgz.unlink()
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as e:
        return None, f"could not fetch Leaflet {version} with npm: {e}"
    dist = cache / "package" / "dist"
    return (dist, f"npm pack leaflet@{version} -> {dist}") if (dist / "leaflet.js").is_file() else (None, "npm package has no dist/leaflet.js")


# ------------------------------------------------------------------------------------------------ server
def _test_flags() -> set[str]:
    "nbdev's `tst_flags` from pyproject.toml: cells flagged with them are skipped by test runs."
    try:
        import tomllib
        return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]["tst_flags"].split())
    except (OSError, KeyError, ImportError): return {"notest", "slow", "cuda"}


def _skipped_by_flags(cell: dict, flags: set[str] | None = None) -> bool:
    "True for a code cell with a `#| slow`-style directive naming one of `flags` (as nbdev-test skips it)."
    if cell["cell_type"] != "code": return False
    flags = _test_flags() if flags is None else flags
    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    for line in src.splitlines():
        m = re.match(r"^\s*#\s*\|\s*(\S+)\s*$", line)
        if m and m.group(1) in flags: return True
        if line.strip() and not line.lstrip().startswith("#"): break   # directives come first
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _jupyter_home(home: Path) -> dict:
    "Isolated Jupyter folders: a kernelspec running this interpreter, Lab settings without popups."
    dirs = {k: home / k for k in ("config", "data", "runtime", "ipython", "settings", "workspaces")}
    for d in dirs.values(): d.mkdir(parents=True, exist_ok=True)
    _write_json(dirs["data"] / "kernels" / "python3" / "kernel.json",
                {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                 "display_name": "Python 3 (cropkit test)", "language": "python"})
    lab = dirs["settings"] / "@jupyterlab"
    _write_json(lab / "apputils-extension" / "notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
    # every cell stays in the page (JupyterLab's default only attaches the visible ones)
    _write_json(lab / "notebook-extension" / "tracker.jupyterlab-settings",
                {"windowingMode": "none", "autoStartDefaultKernel": True})
    return dirs


def _children(pid: int) -> list[int]:
    "Direct child pids of `pid` (the kernels a Jupyter server started run in their own sessions)."
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try: fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError: continue
        if int(fields[1]) == pid: kids.append(int(stat.parent.name))
    return kids


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    "Shut the server down (its kernels first), then kill what is left: the process group and the kernels."
    kernels = _children(proc.pid)
    try: _api(base, token, "/api/shutdown", "POST")
    except Exception: pass
    try: proc.wait(timeout=15)
    except subprocess.TimeoutExpired: pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            try: os.killpg(proc.pid, sig)
            except ProcessLookupError: pass
            try: proc.wait(timeout=10)
            except subprocess.TimeoutExpired: pass
    for pid in kernels:                       # only the kernels this server started, if still running
        try:
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes(): os.killpg(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError): pass    # a kernel leads its own session: kill its group


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free port serving a copy of the notebook; yields (url base, token, folder)."
    why = _missing_requirement()
    if why: pytest.skip(why)
    work = tmp_path / "work"
    work.mkdir()
    nb = json.loads(NOTEBOOK.read_text())
    nb["cells"] = [c for c in nb["cells"] if not _skipped_by_flags(c)]
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3 (cropkit test)", "language": "python"}
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "cropkit-kernel-check", "metadata": {},
                        "outputs": [], "source": f"import sys\nprint({MARKER!r} + sys.executable)"})
    (work / NOTEBOOK.name).write_text(json.dumps(nb))
    dirs = _jupyter_home(tmp_path / "jupyter")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_")) and k != "MPLBACKEND"}
    env.update(JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_PATH=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
               IPYTHONDIR=str(dirs["ipython"]), PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")   # torch beside the browser and the server on a small machine
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--ServerApp.terminals_enabled=False", "--ServerApp.shutdown_no_activity_timeout=900",
           "--KernelSpecManager.ensure_native_kernel=False", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.user_settings_dir={dirs['settings']}", f"--LabApp.workspaces_dir={dirs['workspaces']}"]
    if os.geteuid() == 0: cmd.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except Exception:
                if time.monotonic() > deadline: pytest.fail(f"JupyterLab did not answer within 90 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, work
    finally:
        _stop(proc, base, token)
        print(f"JupyterLab log: {log}")


# ------------------------------------------------------------------------------------------------ browser
def _route_external(context, base: str, leaflet: Path | None) -> None:
    "Serve Leaflet from the local copy; refuse every other request that does not go to the local server."
    def refuse_or_continue(route):
        if route.request.url.startswith(base): route.continue_()
        else: route.abort()
    context.route("**/*", refuse_or_continue)
    if leaflet is not None:   # registered last, so tried first
        types = {"js": "application/javascript", "css": "text/css"}
        context.route(re.compile(r"^https://cdn\.jsdelivr\.net/npm/leaflet@[\d.]+/dist/leaflet\.(js|css)$"),
                      lambda route: route.fulfill(path=str(leaflet / route.request.url.rsplit("/", 1)[1]),
                                                  content_type=types[route.request.url.rsplit(".", 1)[1]]))


def _wait_idle(page, base: str, token: str, timeout: float) -> None:
    "Wait until no cell is queued or running ([*]) and the server reports every kernel idle, twice in a row."
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"the notebook did not finish within {timeout:.0f} s (cells still marked [*])")
        busy_cells = page.locator(".jp-InputArea-prompt", has_text="*").count()
        kernels = _api(base, token, "/api/kernels")
        idle = bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)
        quiet = quiet + 1 if (busy_cells == 0 and idle) else 0
        page.wait_for_timeout(1000)


def _accept_kernel_dialog(page) -> None:
    "Accept the 'Select Kernel' dialog (preselected: the notebook's kernel) if JupyterLab shows one."
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try: dialog.wait_for(state="visible", timeout=5000)
    except Exception: return
    dialog.locator("button", has_text=re.compile("^Select$")).click()


def _open_menu_item(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def test_skipped_by_flags():
    "Cells flagged like nbdev-test's tst_flags are left out of the browser run, others stay."
    code = lambda src: {"cell_type": "code", "source": src}
    flags = {"slow", "cuda", "notest"}
    assert _skipped_by_flags(code("#| slow\nfit(60)"), flags)
    assert _skipped_by_flags(code("# comment\n#|cuda\nx = 1"), flags)
    assert not _skipped_by_flags(code("x = 1\n#| slow"), flags)            # directives come first
    assert not _skipped_by_flags(code("#| export\ndef f(): pass"), flags)
    assert not _skipped_by_flags({"cell_type": "markdown", "source": "#| slow"}, flags)
    assert _test_flags() == {"notest", "slow", "cuda"}


@pytest.mark.browser
def test_tutorial_runs_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    base, token, work = lab
    version = _leaflet_version()
    leaflet, leaflet_source = _leaflet_dir(version)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if ARTIFACTS.resolve().is_relative_to(ROOT) and not (ARTIFACTS / ".gitignore").exists():
        (ARTIFACTS / ".gitignore").write_text("*\n")
    shot = ARTIFACTS / f"{NOTEBOOK.stem}.png"
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            _route_external(context, base, leaflet)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _accept_kernel_dialog(page)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            _open_menu_item(page, "Run", "Run All Cells")
            page.wait_for_timeout(1000)
            _wait_idle(page, base, token, RUN_TIMEOUT_S)
            run_s = time.monotonic() - t0
            page.keyboard.press("Control+s")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / f"{NOTEBOOK.stem}-end.png"))

            # 1. every code cell ran, without errors, on this interpreter
            saved = json.loads((work / NOTEBOOK.name).read_text())
            code = [c for c in saved["cells"] if c["cell_type"] == "code"]
            not_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
            errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(code)
                      for o in c["outputs"] if o["output_type"] == "error"]
            stderr_dom = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            tracebacks = [t[:500] for t in stderr_dom.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not errors, f"cells raised errors: {errors}"
            assert not tracebacks, f"cells show tracebacks:\n" + "\n---\n".join(tracebacks)
            assert not not_run, f"code cells {not_run} (of {len(code)}) did not run"
            exe = [l for l in page.locator(".jp-OutputArea-output").all_inner_texts() if MARKER in l]
            assert exe, "the kernel check cell printed nothing"
            assert exe[-1].strip().split(MARKER, 1)[1].strip() == sys.executable, \
                f"the kernel ran {exe[-1].strip()}, not this environment's {sys.executable}"

            # 2. figures: decoded images in the outputs
            images = page.locator(".jp-OutputArea-output img")
            n_images = images.count()
            assert n_images >= 1, "no figure was rendered"
            widths = images.evaluate_all("els => els.map(e => e.naturalWidth)")
            assert all(w > 0 for w in widths), f"some figures did not decode (naturalWidth {widths})"

            # 3. the folium maps: iframe outputs whose documents hold a map that Leaflet drew, with a legend
            iframes = page.locator(".jp-OutputArea-output iframe").all()
            maps = [(i, i.element_handle().content_frame()) for i in iframes]
            maps = [(i, f) for i, f in maps if f is not None and f.locator(".folium-map").count()]
            assert maps, f"no folium map among the {len(iframes)} iframe outputs"
            if leaflet is None:
                warnings.warn(f"Leaflet {version} unavailable ({leaflet_source}): the maps' drawing was not checked")
            for k, (iframe, frame) in enumerate(maps):
                iframe.scroll_into_view_if_needed()
                frame_height = iframe.bounding_box()["height"]
                map_height = frame.locator(".folium-map").first.bounding_box()["height"]
                assert abs(frame_height - map_height) <= 4, \
                    f"map {k} is {map_height:.0f} px tall in a {frame_height:.0f} px frame (a blank band under it)"
                assert map_height >= 300, f"map {k} is squeezed to {map_height:.0f} px"
                if leaflet is not None:
                    frame.wait_for_selector(".leaflet-container", timeout=30_000)
                    assert frame.locator("path.leaflet-interactive").count() > 0, f"map {k} shows no parcels or points"
                    assert frame.locator(".cropkit-legend").count() >= 1, f"map {k} has no legend"
                    if k == 0:       # a click opens the popup of a parcel/point
                        frame.locator("path.leaflet-interactive").first.click(force=True)
                        frame.wait_for_selector(".leaflet-popup-content .cropkit-popup", timeout=10_000)
                    page.wait_for_timeout(300)
                iframe.screenshot(path=str(ARTIFACTS / f"{NOTEBOOK.stem}-map{k}.png"))
            maps[0][0].scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"ran {len(code)} code cells in {run_s:.0f} s; {n_images} figures, {len(maps)} maps "
          f"(Leaflet: {leaflet_source}); screenshots in {ARTIFACTS}: {sorted(p.name for p in ARTIFACTS.glob('*.png'))}")
