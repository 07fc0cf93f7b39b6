"""Imagery -> training data -> model -> map, on the real WorldCereal patch and the real eo-learn Slovenia patch, through
`cropkit map` and `cropkit predict`: products on the cube's grid, parcel maps, areas, and bad input named."""
import json

import numpy as np
import pandas as pd
import pytest

gpd = pytest.importorskip("geopandas")
pytest.importorskip("exactextract")
rasterio = pytest.importorskip("rasterio")

from cropkit.cli import main
from cropkit.core import data_path
from cropkit.data.series import SeriesDataset
from cropkit.geo.clean import clean, composite
from cropkit.geo.cube import open_eopatch, open_netcdf
from cropkit.geo.extract import demo_parcels, extract_parcels
from cropkit.geo.raster import class_areas
from cropkit.train.inference import load_predictor
from cropkit.train.recipes import Recipe, train_recipe

WC = data_path("worldcereal_belgium", "worldcereal_preprocessed_inputs.nc")
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
SLO = data_path("eolearn_slovenia")
SMALL = Recipe("TempCNN", epochs=15, lr=3e-3, batch_size=16, hparams=dict(hidden_dims=16, kernel_size=3),
               normalization="standardize")


CUBE = ["--cube", WC, "--prefix", "S2-L2A-", "--nodata", "65535", "--period", "month", "--start", "2020-11-01", "--end", "2021-10-31"]


@pytest.fixture(scope="module")
def wc():
    "The real patch with its undeclared no-data (65535: all of 2020-12 and 2021-01) masked and filled by monthly composites."
    raw = open_netcdf(WC, prefix="S2-L2A-", bands=S2)
    return composite(clean(raw, nodata=65535), "month", start="2020-11-01", end="2021-10-31")


@pytest.fixture(scope="module")
def wc_model(wc, tmp_path_factory):
    "A TempCNN trained on the parcel means of 60 demo parcels of the real WorldCereal patch (reflectance = values x 1e-4)."
    root = tmp_path_factory.mktemp("wc")
    parcels = demo_parcels(wc, 60, seed=0)
    parcels.to_file(root / "parcels.gpkg", layer="parcels")
    ds = extract_parcels(wc, root / "parcels.gpkg", "id", "CODE_CULTU")
    data = SeriesDataset.from_extracted(ds)
    data.X *= 1e-4
    train_recipe(SMALL, data, logdir=root / "run", device="cpu", seed=0)
    return root / "run" / "last.pt", root / "parcels.gpkg", data


def run(capsys, argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_map_worldcereal_cli(wc, wc_model, tmp_path, capsys):
    ckpt, parcels, data = wc_model
    out = tmp_path / "map.tif"
    code, text, err = run(capsys, ["map", ckpt, *CUBE, "--out", out, "--parcels", parcels,
                                   "--out-parcels", tmp_path / "fields.gpkg", "--device", "cpu", "-q"])
    assert code == 0, err
    assert "mapped 100 x 100 pixels (0 no-data) of 12 dates with TempCNN" in text and "wrote " in text
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32631 and src.transform == wc.rio.transform() and src.shape == (100, 100)
        classes = src.read(1)
        names = json.loads(src.tags()["CLASS_NAMES"])
    assert set(names.values()) == set(data.classes)
    with rasterio.open(tmp_path / "map_probs.tif") as src:
        assert src.count == len(data.classes) and list(src.descriptions) == data.classes
    rep = json.loads((tmp_path / "map.json").read_text())
    assert rep["checkpoint_sha256"] == load_predictor(ckpt, "cpu").sha256 and rep["scale"] == 1e-4
    assert sum(rep["mapped_pixels"].values()) == 100 * 100
    # 10 m pixels: 100 x 100 px = 100 ha, and the areas agree with a count of the class map
    assert abs(sum(rep["mapped_area_ha"].values()) - 100.0) < 1e-6
    areas = class_areas(out)
    assert dict(zip(areas.name, areas.pixels)) == {names[str(k)]: int((classes == k).sum()) for k in np.unique(classes)}
    # the same pixels through the model directly: the map is the model's arg-max of each pixel's series
    p = load_predictor(ckpt, "cpu")
    x = (wc.values.astype(np.float32) * np.float32(1e-4)).reshape(12, 9, -1).transpose(2, 0, 1)
    direct = p.predict_proba(x).argmax(1).reshape(100, 100)
    assert (direct == classes).mean() > 0.999
    fields = gpd.read_file(tmp_path / "fields.gpkg")
    assert len(fields) == 60 and {"id", "class", "confidence"} <= set(fields.columns)
    pcols = [f"p_{c}" for c in data.classes]
    assert np.allclose(fields[pcols].sum(axis=1), 1.0, atol=0.02)        # uint8 probabilities: 1/255 steps
    # the same parcel map from the float probabilities in Python
    from cropkit.geo.classify import classify_cube, parcel_map
    ref = parcel_map(parcels, "id", probs=classify_cube(p, wc)).set_index("id").loc[fields["id"]]
    assert (ref["class"].to_numpy() == fields["class"].to_numpy()).mean() >= 0.95
    assert np.abs(ref[pcols].to_numpy() - fields[pcols].to_numpy()).max() < 0.01
    # --parcel-method majority: the class covering most of each field, checked against a count of the class map
    (tmp_path / "m2").mkdir()
    code, text, err = run(capsys, ["map", ckpt, *CUBE, "--out", tmp_path / "m2" / "map.tif", "--parcels", parcels, "--parcel-method",
                                   "majority", "--out-parcels", tmp_path / "votes.gpkg", "--device", "cpu", "-q"])
    assert code == 0, err
    votes = gpd.read_file(tmp_path / "votes.gpkg").set_index("id")
    assert np.allclose(votes[pcols].sum(axis=1), 1.0, atol=1e-6) and (votes["confidence"] >= 1 / len(pcols)).all()
    # independent check: each field's class shares counted on the written class map, each pixel weighted by the area
    # of the field inside it (shapely intersections of the pixel squares); the vote is the class with the largest share
    import shapely
    with rasterio.open(out) as src: transform = src.transform
    rows, cols = np.mgrid[0:100, 0:100]
    x0, y0 = transform.c + cols.ravel() * transform.a, transform.f + rows.ravel() * transform.e
    squares = shapely.box(x0, y0 + transform.e, x0 + transform.a, y0)
    code_of = {name: int(k) for k, name in names.items()}
    diffs, agree = [], []
    for pid, geom in gpd.read_file(parcels).to_crs(32631).set_index("id").geometry.items():
        if pid not in votes.index: continue
        cover = shapely.area(shapely.intersection(squares, geom))
        shares = np.bincount(classes.ravel(), weights=cover, minlength=256) / cover.sum()
        diffs.append(max(abs(shares[code_of[c]] - votes.loc[pid, f"p_{c}"]) for c in data.classes))
        top = np.sort(shares)[::-1]
        if top[0] - top[1] > 0.05: agree.append(names[str(int(shares.argmax()))] == votes.loc[pid, "class"])   # clear winners
    assert len(diffs) == 60 and max(diffs) < 0.01, max(diffs)
    assert len(agree) >= 20 and all(agree), (len(agree), np.mean(agree))


def test_map_refuses_and_writes_nothing(wc, wc_model, tmp_path, capsys, monkeypatch):
    "Each refusal leaves nothing behind; a bad parcel file is refused before any pixel is classified."
    import cropkit.geo.classify as gc
    ckpt, parcels, _ = wc_model
    base = ["map", ckpt, *CUBE, "--device", "cpu", "-q"]

    def refused(argv, *fragments):
        code, _, err = run(capsys, base + argv)
        assert code == 2, err
        assert err.startswith("cropkit: error: ") and "Traceback" not in err
        for f in fragments: assert f in err, err
        assert [p.name for p in tmp_path.iterdir()] == [], list(tmp_path.iterdir())

    refused(["--out", tmp_path / "m.tif", "--scale", "1"], "times those", "e.g. 0.0001")
    refused(["--out", tmp_path / "m.tif", "--bands", "B02,B03"], "lacks the band(s)")
    refused(["--out", tmp_path / "m.tif", "--period", "61D"], "6 dates", "series of 12")
    refused(["--out", tmp_path / "m.tif", "--smooth", "4"], "--smooth must be an odd window")
    refused(["--out", tmp_path / "m.tif", "--parcels", parcels], "--parcels and --out-parcels go together")
    refused(["--out", tmp_path / "m.png"], "--out must name the class-map GeoTIFF")
    monkeypatch.setattr(gc, "map_cube", lambda *a, **k: pytest.fail("map_cube ran before the parcels were checked"))
    refused(["--out", tmp_path / "m.tif", "--parcels", parcels, "--out-parcels", tmp_path / "p.gpkg", "--id-col", "ID"],
            "no id column 'ID'")
    monkeypatch.undo()
    refused(["--out", tmp_path / "m.tif", "--bbox", "10,10,11,11"], "does not overlap")
    refused(["--out", tmp_path / "new" / "folders" / "m.tif", "--period", "61D"], "6 dates")   # the folders it made are gone
    (tmp_path / "m_probs.tif").write_text("an earlier map")
    code, _, err = run(capsys, base + ["--out", tmp_path / "m.tif"])
    assert code == 2 and "m_probs.tif already exists" in err
    assert (tmp_path / "m_probs.tif").read_text() == "an earlier map" and not (tmp_path / "m.tif").exists()


def test_map_with_smoothing_and_bbox(wc_model, tmp_path, capsys):
    ckpt, _, _ = wc_model
    code, text, err = run(capsys, ["map", ckpt, *CUBE, "--out", tmp_path / "s.tif",
                                   "--smooth", "5", "--modal", "3", "--device", "cpu", "-q"])
    assert code == 0, err
    rep = json.loads((tmp_path / "s.json").read_text())
    assert (rep["smooth_window"], rep["modal_window"]) == (5, 3)


def test_slovenia_cloud_masked_ndvi_composites(tmp_path, capsys):
    "The real eo-learn patch: 68 cloud-masked NDVI dates composited by month, trained on its land-use polygons, mapped."
    cube = composite(clean(open_eopatch(SLO, ["data/NDVI", "mask/CLM"]), mask_band="CLM"), "month")
    polygons = data_path("eolearn_slovenia", "vector_timeless", "LULC.gpkg")
    lulc = gpd.read_file(polygons)
    lulc["pid"] = np.arange(len(lulc))
    lulc = lulc[lulc.LULC_NAME.fillna("").str.strip() != ""]          # 4 polygons of the register have no class name
    lulc.to_file(tmp_path / "lulc.gpkg", layer="lulc")
    ds = extract_parcels(cube, tmp_path / "lulc.gpkg", "pid", "LULC_NAME")
    data = SeriesDataset.from_extracted(ds, dropna=True)
    assert len(data) == 59 and set(data.classes) <= set(lulc.LULC_NAME)     # 25 polygons reach outside the patch
    train_recipe(SMALL, data, logdir=tmp_path / "run", device="cpu", seed=0)
    code, text, err = run(capsys, ["map", tmp_path / "run" / "last.pt", "--images", tmp_path / "none", "--out", tmp_path / "x.tif"])
    assert code == 2 and "none" in err                        # a missing folder is named
    p = load_predictor(tmp_path / "run" / "last.pt", "cpu")
    from cropkit.geo.classify import classify_cube, map_cube, parcel_map
    out = map_cube(p, cube, tmp_path / "slo.tif", scale=1.0)
    rep = json.loads(out["report"].read_text())
    assert rep["shape"] == [101, 100] and rep["dates"][0].endswith("-01")
    # the map, averaged over each polygon, gives back most of the land-use labels it was trained on
    fields = parcel_map(tmp_path / "lulc.gpkg", "pid", probs=classify_cube(p, cube, scale=1.0))
    truth = lulc.set_index("pid").loc[fields["pid"], "LULC_NAME"].to_numpy()
    majority = pd.Series(truth).value_counts(normalize=True).iloc[0]
    assert (fields["class"].to_numpy() == truth).mean() > majority, majority
    assert sum(rep["mapped_pixels"].values()) + rep["nodata_pixels"] == 101 * 100


def test_workflow_main_job_as_in_the_readme(tmp_path, capsys, monkeypatch):
    "The README's main command (fewer epochs), run in a fresh folder: the files it names and the figures it prints."
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    line = next(l for l in readme.splitlines() if "cropkit workflow" in l and l.startswith("python3 -m venv"))
    argv = line.split("&& cropkit ", 1)[1].split()
    assert argv[0] == "workflow"
    root = Path(__file__).resolve().parent.parent
    argv = [str(root / a) if a.startswith("data/") else a for a in argv]
    monkeypatch.chdir(tmp_path)
    code, text, err = run(capsys, argv + ["--epochs", "5", "-q", "--device", "cpu"])
    assert code == 0, err
    out = tmp_path / "runs" / "slovenia"
    for name in ("map.tif", "map_probs.tif", "map_uncertainty.tif", "map.json", "fields.gpkg", "accuracy.json", "summary.json",
                 "model/last.pt"):
        assert (out / name).exists(), name
    assert "polygons: 88 (4 without a class dropped)" in text and "held-out fields: accuracy" in text
    assert re.search(r"overall accuracy 0\.\d+ ± 0\.\d+ \(95 % CI", text), text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained_on"] == "32 pixels per field" and abs(sum(summary["mapped_area_ha"].values()) - 100.92) < 0.01
    # a second run into the same folder is refused before any work, and leaves it as it was
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run(capsys, argv + ["-q"])
    assert code == 2 and "is not empty" in err and sorted(p.name for p in out.iterdir()) == before
