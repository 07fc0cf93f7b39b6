"""Project-level checks: packaging, the README/index mirror, the shape of the repository."""
import json, subprocess, sys, tomllib, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from sync_index import readme_sections  # noqa: E402


def test_index_mirrors_readme():
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    cells = ["".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert cells == readme_sections((ROOT / "README.md").read_text()), \
        "nbs/index.ipynb is out of date: run `python tools/sync_index.py`"


def test_pyproject_packages_and_nbdev_settings():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["setuptools"]["packages"]["find"]["include"] == ["cropkit", "cropkit.*"]
    assert cfg["tool"]["nbdev"]["tst_flags"] == "notest slow cuda"
    assert not (ROOT / "settings.ini").exists(), "nbdev 3 keeps its settings in pyproject.toml"
    deps = " ".join(cfg["project"]["dependencies"])
    for banned in ("torchvision", "timm"):
        assert banned not in deps
    extras = cfg["project"]["optional-dependencies"]
    assert {"geo", "viz", "docs", "dev", "gee"} <= set(extras)     # Earth Engine (xee) stays out of the geo extra
    assert any(d.startswith("xee") for d in extras["gee"]) and not any("xee" in d for d in extras["geo"])


def test_every_exported_module_comes_from_a_notebook():
    modules = {p.relative_to(ROOT / "cropkit").with_suffix("").as_posix().replace("/", ".")
               for p in (ROOT / "cropkit").rglob("*.py") if not p.name.startswith("_")}
    sources = set()
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and src.startswith("#| default_exp"):
                sources.add(src.split()[2])
    packages = {m.rsplit(".", 1)[0] for m in modules if m.endswith("__init__")}
    stray = {m for m in modules if not m.endswith("__init__")} - sources
    assert not stray, f"modules without a notebook (edit nbs/, then nbdev-export): {sorted(stray)}"
    assert packages <= ({""} | {m.rsplit(".", 1)[0] for m in sources if "." in m} | {"data", "models", "viz"})


def test_wheel_contains_subpackages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("cropkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("cropkit/core.py", "cropkit/data/__init__.py", "cropkit/models/__init__.py"):
        assert module in names, f"{module} missing from {wheel.name}"
    shipped = {p.relative_to(ROOT / "data").as_posix() for p in (ROOT / "data").rglob("*") if p.is_file()}
    in_wheel = {n.split("/share/cropkit/data/", 1)[1] for n in names if "/share/cropkit/data/" in n}
    assert shipped and shipped == in_wheel, f"data/ files missing from the wheel: {sorted(shipped - in_wheel)}"


def test_data_path_finds_a_wheel_installed_copy(tmp_path, monkeypatch):
    "Without a clone's data/ next to the package, data_path uses <sys.prefix>/share/cropkit/data."
    import cropkit.core as core
    prefix = tmp_path / "prefix"
    (prefix / "share" / "cropkit" / "data" / "h2crop").mkdir(parents=True)
    (prefix / "share" / "cropkit" / "data" / "h2crop" / "cascade_labels.csv").write_text("x\n")
    monkeypatch.delenv("CROPKIT_DATA", raising=False)
    monkeypatch.setattr(core, "_package_dir", lambda: tmp_path / "site-packages" / "cropkit")
    monkeypatch.setattr(core.sys, "prefix", str(prefix))
    assert core.data_path("h2crop", "cascade_labels.csv") == prefix / "share" / "cropkit" / "data" / "h2crop" / "cascade_labels.csv"
    monkeypatch.setattr(core.sys, "prefix", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="set CROPKIT_DATA"):
        core.data_path("h2crop")


def test_subpackages_export_their_names():
    "`from cropkit.models import *` (and data, viz) brings in the re-exported names, all of which exist."
    import importlib
    for name, expected in [("cropkit.data", "H2Crop"), ("cropkit.models", "get_model"), ("cropkit.viz", "plot_confusion")]:
        module = importlib.import_module(name)
        assert expected in module.__all__, name
        namespace = {}
        exec(f"from {name} import *", namespace)
        assert set(module.__all__) <= set(namespace), name
