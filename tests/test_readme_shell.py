"""Every `cropkit` command of the README's shell blocks runs as written, in order, in a fresh folder (epochs and trials
cut to one), and writes the files the README names. The inputs the README says are the user's own (`parcels.gpkg`,
`samples.gpkg`) and the generated folders of its Python tour are made here first."""
import json, re, shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("rasterio", reason="the README's imagery commands need the geo extra")


def readme_commands() -> list[list[str]]:
    "The `cropkit ...` lines of the README's bash blocks, continuation lines joined, comments dropped."
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["cropkit"]: out.append(words[1:])
    return out


def cheap(args: list[str]) -> list[str]:
    "The same command with one epoch (one trial): what it does, not how well."
    args = list(args)
    for opt, value in (("--epochs", "1"), ("--trials", "1")):
        if opt in args: args[args.index(opt) + 1] = value
    if args[0] in ("train", "tune") and "--epochs" not in args: args += ["--epochs", "1"]
    if args[:2] == ["h2crop", "train"] and "--epochs" not in args: args += ["--epochs", "1"]
    return args


EXPECTED = {   # first words of a command -> files it must have written (the README names them)
    "train TempCNN --dataset victoria --logdir runs/tempcnn-victoria": [
        "runs/tempcnn-victoria/" + f for f in ("manifest.json", "history.csv", "last.pt", "predictions.csv", "results.json")],
    "train TempCNN --dataset victoria --epochs": ["runs/tempcnn-60/last.pt", "runs/tempcnn-60/results.json"],
    "train TransformerEncoder --dataset breizhcrops": ["runs/breizhcrops-TransformerEncoder-seed0/results.json"],
    "evaluate runs/tempcnn-60/last.pt": ["runs/tempcnn-60/metrics-last-victoria-evaluation.json"],
    "train TempCNN --dataset victoria --mode grouped": ["runs/tempcnn-grouped/results.json"],
    "tune TempCNN": ["runs/tune-tempcnn.csv"],
    "h2crop train tiny": ["runs/h2crop-cli/best.pt"],
    "extract parcels.gpkg": ["runs/own/2020/L2A/myfarm.csv", "runs/own/2020/L2A/myfarm.h5"],
    "train TempCNN --dataset breizhcrops --root runs/own": ["runs/own-model/last.pt"],
    "map runs/own-model/last.pt": ["runs/map/" + f for f in ("map.tif", "map_probs.tif", "map_uncertainty.tif", "map.json", "parcels.gpkg")],
    "predict runs/own-model/last.pt": ["runs/predictions.csv"],
    "sample-design": ["runs/points.gpkg"],
    "assess": ["runs/report.json"],
}


def make_inputs(folder: Path):
    "What the README's Python tour and the user bring: generated BreizhCrops and H2Crop folders, polygons, labelled points."
    from cropkit.data.synthetic import make_breizhcrops
    from cropkit.data.h2crop_synthetic import make_h2crop
    from cropkit.geo import open_netcdf
    from cropkit.geo.extract import demo_parcels
    (folder / "data").symlink_to(ROOT / "data")
    make_breizhcrops(folder / "runs" / "breizhcrops_demo", regions=["frh04"], n_parcels=200)   # as in the README tour
    make_h2crop(folder / "runs" / "h2crop_demo", size=96)
    cube = open_netcdf(ROOT / "data/worldcereal_belgium/worldcereal_preprocessed_inputs.nc", prefix="S2-L2A-")
    demo_parcels(cube, 60, seed=0).to_file(folder / "parcels.gpkg")


def label_points(folder: Path):
    "samples.gpkg: the sample-design points inside a polygon, labelled with that polygon's crop class."
    import geopandas as gpd
    points = gpd.read_file(folder / "runs" / "points.gpkg")
    parcels = gpd.read_file(folder / "parcels.gpkg").to_crs(points.crs)
    names = pd.read_csv(folder / "runs" / "own" / "classmapping.csv").set_index("code")["classname"]
    hit = gpd.sjoin(points, parcels[["CODE_CULTU", "geometry"]], predicate="within")
    hit["label"] = hit["CODE_CULTU"].map(names)
    hit[["label", "geometry"]].to_file(folder / "samples.gpkg")
    return len(hit)


@pytest.mark.slow
def test_readme_shell_commands(tmp_path, monkeypatch, capsys):
    from cropkit.cli import main
    commands = readme_commands()
    assert len(commands) >= 14, "the README lost shell commands"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    make_inputs(tmp_path)
    assert all(key in [" ".join(a) for a in commands][0] or any(" ".join(a).startswith(key) for a in commands)
               for key in EXPECTED), "a command of EXPECTED is no longer in the README"
    for args in commands:
        line = " ".join(args)
        if args[0] == "assess": assert label_points(tmp_path) > 50
        code = main(cheap(args))
        out, err = capsys.readouterr()
        assert code == 0, f"cropkit {line}\n{err}"
        for key, files in EXPECTED.items():
            if line.startswith(key):
                missing = [f for f in files if not (tmp_path / f).exists()]
                assert not missing, f"cropkit {line} did not write {missing}"
                unnamed = [f for f in files if Path(f).name not in out]
                assert not unnamed, f"cropkit {line} wrote {unnamed} without saying so:\n{out}"
    report = json.loads((tmp_path / "runs" / "report.json").read_text())
    assert 0 <= report["overall_accuracy"] <= 1 and set(report["area_ha"]) >= set(report["mapped_area_ha"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "parcels.gpkg", "runs", "samples.gpkg"]   # all under runs/
