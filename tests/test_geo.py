"""cropkit.geo on real samples, offline: a static STAC catalog of COGs written from the WorldCereal patch, the 88
eo-learn land-use polygons, the 18 sits Sinop points; the written BreizhCrops layout trains; bad input is named."""
import json, shutil

import numpy as np
import pandas as pd
import pytest

gpd = pytest.importorskip("geopandas")
pytest.importorskip("exactextract")
pytest.importorskip("odc.stac")
import shapely

from cropkit.cli import main
from cropkit.core import data_path
from cropkit.geo.clean import clean
from cropkit.geo.cube import open_eopatch, open_images, open_netcdf, open_stac, write_stac_catalog
from cropkit.geo.extract import (demo_parcels, extract_parcels, read_parcels, sample_points, skipped_parcels,
                                 write_breizhcrops)

WC = data_path("worldcereal_belgium", "worldcereal_preprocessed_inputs.nc")
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
SMALL = ["-H", "hidden_dims=8", "--batchsize", "16", "-q"]


@pytest.fixture(scope="module")
def wc():
    return open_netcdf(WC, prefix="S2-L2A-", bands=S2)


@pytest.fixture(scope="module")
def catalog(wc, tmp_path_factory):
    "A self-contained static STAC catalog of COGs (12 dates x 9 bands) written from the real WorldCereal patch."
    return write_stac_catalog(wc, tmp_path_factory.mktemp("stac") / "worldcereal", "worldcereal")


@pytest.fixture(scope="module")
def parcels_file(wc, tmp_path_factory):
    path = tmp_path_factory.mktemp("parcels") / "parcels.gpkg"
    demo_parcels(wc, 40, seed=0).to_crs("EPSG:4326").to_file(path)     # another CRS: reprojected on reading
    return path


def coverage_mean(cube_band: np.ndarray, transform, geom) -> np.ndarray:
    "Independent reference: numpy over the pixel squares, weighted by their exact intersection area with `geom`."
    h, w = cube_band.shape[-2:]
    a = transform
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    cells = shapely.box(a.c + a.a * cols, a.f + a.e * (rows + 1), a.c + a.a * (cols + 1), a.f + a.e * rows)
    wt = shapely.area(shapely.intersection(cells, geom)) / shapely.area(cells)
    return (cube_band * wt).sum((-2, -1)) / wt.sum()


def test_stac_catalog_extraction_matches_numpy(wc, catalog, parcels_file):
    cube = open_stac(catalog, bands=S2)
    assert cube.shape == (12, 9, 100, 100) and cube.rio.crs.to_epsg() == 32631
    assert cube.rio.transform() == wc.rio.transform()
    ds = extract_parcels(cube.chunk({"y": 32, "x": 32}), parcels_file, "id", "CODE_CULTU", stats=("mean", "std"))
    assert ds.sizes == {"parcel": 40, "time": 12, "band": 9} and len(skipped_parcels(ds)) == 0
    from_nc = extract_parcels(wc, parcels_file, "id", "CODE_CULTU")
    np.testing.assert_allclose(ds["mean"].values, from_nc["mean"].values, rtol=1e-6)
    g = read_parcels(parcels_file, "id").to_crs(32631).set_index("id")
    raw = wc.sel(band="B08").values.astype(np.float64)
    for pid in ds.parcel.values[:8]:
        ref = coverage_mean(raw, wc.rio.transform(), g.geometry[pid])
        np.testing.assert_allclose(ds["mean"].sel(parcel=pid, band="B08").values, ref, rtol=1e-5)
    assert float(ds["std"].max()) > 0 and float(ds["cloud_fraction"].max()) == 0


def test_eolearn_88_polygons_with_cloud_mask():
    cube = clean(open_eopatch(data_path("eolearn_slovenia"), ["data/NDVI", "mask/CLM"]), mask_band="CLM")
    gpkg = data_path("eolearn_slovenia", "vector_timeless", "LULC.gpkg")
    ds = extract_parcels(cube, gpkg, "index", "LULC_NAME")
    sk = skipped_parcels(ds)
    assert len(ds.parcel) + len(sk) == 88 and set(sk["reason"]) == {"partly outside the cube"}
    clip = extract_parcels(cube, gpkg, "index", "LULC_NAME", partial="clip")
    assert len(clip.parcel) + len(skipped_parcels(clip)) == 88
    assert (clip["inside_fraction"].values > 0).all() and (clip["inside_fraction"].values <= 1).all()
    ndvi = np.load(data_path("eolearn_slovenia", "data", "NDVI.npy"))[..., 0]
    clm = np.load(data_path("eolearn_slovenia", "mask", "CLM.npy"))[..., 0]
    g = read_parcels(gpkg, "index").set_index("index")
    for pid in ds.parcel.values[::10]:
        num = coverage_mean(np.where(clm == 0, ndvi, 0.0), cube.rio.transform(), g.geometry[pid])
        den = coverage_mean((clm == 0).astype(float), cube.rio.transform(), g.geometry[pid])
        with np.errstate(invalid="ignore", divide="ignore"): ref = np.where(den > 0, num / den, np.nan)
        np.testing.assert_allclose(ds["mean"].sel(parcel=pid, band="NDVI").values, ref, rtol=1e-4)
        np.testing.assert_allclose(ds["cloud_fraction"].sel(parcel=pid).values, 1 - den, atol=1e-6)
    m = ds["mean"].values[..., 0]
    assert np.isnan(m).any() and not (m == 0).any()               # cloudy dates are NaN, never zero


def test_sinop_points_all_dates():
    import rasterio
    from pyproj import Transformer
    cube = open_images(data_path("sits_sinop", "mod13q1"), "TERRA_MODIS_012010_{band}_{date}.jp2")
    ds = sample_points(cube, data_path("sits_sinop", "samples_sinop_crop.csv"))
    csv = pd.read_csv(data_path("sits_sinop", "samples_sinop_crop.csv"))
    assert ds["value"].shape == (18, 12, 1) and list(ds["id"].values) == csv["id"].tolist()
    for k, f in enumerate(sorted(data_path("sits_sinop", "mod13q1").glob("*.jp2"))):
        with rasterio.open(f) as src:
            xy = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(csv.longitude.values, csv.latitude.values)
            ref = np.array([v[0] for v in src.sample(list(zip(*xy)))])
        np.testing.assert_array_equal(ds["value"].values[:, k, 0], ref)


def test_written_layout_trains_python_api(wc, parcels_file, tmp_path):
    from cropkit.data.breizhcrops import BreizhCrops, default_transform
    from cropkit.models.registry import get_model
    from cropkit.train import fit
    ds = extract_parcels(wc, parcels_file, "id", "CODE_CULTU")
    write_breizhcrops(ds, tmp_path, "myregion", year=2021, band_map={"B8A": "B08"})
    data = BreizhCrops("myregion", root=tmp_path, year=2021, level="L2A",
                       transform=default_transform("L2A", sequencelength=12, sampling="even"))
    assert len(data) == 40 and data[0][0].shape == (12, 10)
    packed = BreizhCrops("myregion", root=tmp_path, year=2021, level="L2A", preload_ram=True).to_packed(sequencelength=12)
    assert len(packed) == 40
    model = get_model("TempCNN", input_dim=10, num_classes=data.num_classes, sequencelength=12, hidden_dims=8)
    learner = fit(model, data, data, epochs=1, batch_size=16, progress=False, device="cpu")
    assert len(learner.history) == 1


def test_cli_extract_then_train(catalog, wc, tmp_path, capsys):
    out = tmp_path / "out"
    for k, region in enumerate(("frh01", "frh02", "frh03", "frh04")):
        parcels = tmp_path / f"{region}.geojson"
        demo_parcels(wc, 20, seed=k).to_file(parcels)
        code = main(["extract", parcels, "--stac", catalog, "--start", "2020-11-01", "--end", "2021-10-31",
                     "--label-col", "CODE_CULTU", "--id-col", "id", "--region", region, "--out", out,
                     "--band-map", "B8A=B08", "--workers", "2", "-q"])
        assert code == 0, capsys.readouterr().err
    assert "wrote 20 parcel series (12 dates, 9 bands)" in capsys.readouterr().out
    idx = pd.read_csv(out / "2020" / "L2A" / "frh04.csv")
    assert list(idx.columns) == ["idx", "id", "CODE_CULTU", "path", "meanCLD", "sequencelength", "classid", "classname", "region"]
    assert json.loads((out / "2020" / "L2A" / "frh04.json").read_text())["substituted"] == {"B8A": "B08"}
    code = main(["train", "TempCNN", "--dataset", "breizhcrops", "--root", out, "--year", "2020", "--level", "L2A",
                 "--mode", "evaluation1", "--epochs", "1", "--logdir", tmp_path / "run", "--device", "cpu", *SMALL])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "results.json").exists()


def test_cli_extract_one_region_then_train_and_evaluate(catalog, wc, tmp_path, capsys):
    "One region of your own: --regions trains on three quarters of its parcels and tests on the rest; evaluate finds them again."
    out = tmp_path / "out"
    demo_parcels(wc, 60, seed=3).to_file(tmp_path / "fields.geojson")
    code = main(["extract", tmp_path / "fields.geojson", "--stac", catalog, "--start", "2020-11-01", "--end", "2021-10-31",
                 "--label-col", "CODE_CULTU", "--id-col", "id", "--region", "Myfarm", "--out", out, "--band-map", "B8A=B08", "-q"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["train", "TempCNN", "--dataset", "breizhcrops", "--root", out, "--year", "2020", "--level", "L2A",
                 "--regions", "Myfarm", "--epochs", "1", "--logdir", tmp_path / "run", "--device", "cpu", *SMALL])
    text = capsys.readouterr()
    assert code == 0, text.err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["mode"] == "regions:Myfarm" and res["train_size"] + res["test_size"] == 60 and 10 <= res["test_size"] <= 20
    code = main(["evaluate", tmp_path / "run" / "last.pt", "--device", "cpu"])          # dataset, root and mode from the run
    text = capsys.readouterr()
    assert code == 0, text.err
    metrics = json.loads((tmp_path / "run" / "metrics-last-breizhcrops-regions_Myfarm.json").read_text())
    assert metrics["size"] == res["test_size"] and metrics["accuracy"] == pytest.approx(res["accuracy"])
    assert main(["train", "TempCNN", "--dataset", "breizhcrops", "--root", out, "--regions", "Myfarm", "--mode", "evaluation1"]) == 2
    assert "--regions replaces --mode" in capsys.readouterr().err


# --- bad input: one clear line naming the file, column or value ----------------------------------------------
def cli_error(capsys, argv, *fragments):
    capsys.readouterr()                               # drop what the test's own set-up printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cropkit: error: ") and "Traceback" not in err
    for f in fragments: assert f in err, err


BASE = ["--start", "2020-11-01", "--end", "2021-10-31", "--label-col", "CODE_CULTU", "--id-col", "id", "--region", "r", "-q"]


def test_bad_parcels(wc, tmp_path, capsys):
    g = demo_parcels(wc, 5)
    cases = {
        "nocol.gpkg": (g.drop(columns="CODE_CULTU"), "no label column 'CODE_CULTU'"),
        "dup.gpkg": (g.assign(id=[1, 1, 2, 3, 4]), "duplicate 'id' value(s) [1]"),
        "empty.gpkg": (g.assign(geometry=[g.geometry.iloc[0]] * 4 + [shapely.Polygon()]), "empty geometry"),
        "invalid.gpkg": (g.assign(geometry=list(g.geometry.iloc[:4]) + [shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])]), "invalid geometries"),
        "outside.gpkg": (g.set_crs("EPSG:32633", allow_override=True), "none of the 5 parcels can be extracted"),
    }
    for name, (frame, msg) in cases.items():
        frame.to_file(tmp_path / name)
        cli_error(capsys, ["extract", tmp_path / name, "--cube", WC, "--prefix", "S2-L2A-", "--band-map", "B8A=B08",
                           "--out", tmp_path / "o", *BASE], msg)
    g.set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.shp")     # a shapefile without .prj
    cli_error(capsys, ["extract", tmp_path / "nocrs.shp", "--cube", WC, "--out", tmp_path / "o", *BASE], "has no CRS")
    cli_error(capsys, ["extract", tmp_path / "missing.gpkg", "--cube", WC, "--out", tmp_path / "o", *BASE], "missing.gpkg")
    (tmp_path / "text.gpkg").write_text("not a geopackage")
    cli_error(capsys, ["extract", tmp_path / "text.gpkg", "--cube", WC, "--out", tmp_path / "o", *BASE], "cannot read the parcel file")


def test_bad_imagery(wc, catalog, parcels_file, tmp_path, capsys):
    o = ["--out", tmp_path / "o"]
    cli_error(capsys, ["extract", parcels_file, "--cube", WC, "--bands", "B02,B99", *o, *BASE], "unknown band 'B99'")
    cli_error(capsys, ["extract", parcels_file, "--stac", catalog, *o, *BASE[:-1], "--start", "2030-01-01", "--end", "2030-12-31"],
              "lies in 2030-01-01")
    cli_error(capsys, ["extract", parcels_file, "--cube", WC, "--prefix", "S2-L2A-", *o, *BASE], "lack the L2A band(s) ['B8A']")
    # a catalog whose items lack the projection extension
    bad = tmp_path / "noproj"
    shutil.copytree(catalog.parent, bad)
    for item in bad.glob("*/*.json"):
        d = json.loads(item.read_text())
        d["properties"] = {k: v for k, v in d["properties"].items() if not k.startswith("proj:")}
        d["stac_extensions"] = [e for e in d.get("stac_extensions", []) if "projection" not in e]
        item.write_text(json.dumps(d))
    cli_error(capsys, ["extract", parcels_file, "--stac", bad / "catalog.json", *o, *BASE], "lack the projection extension")
    # an unreadable image in a folder
    folder = tmp_path / "imgs"; shutil.copytree(data_path("sits_sinop", "mod13q1"), folder)
    (folder / "TERRA_MODIS_012010_NDVI_2013-10-16.jp2").write_bytes(b"broken")
    cli_error(capsys, ["extract", parcels_file, "--images", folder, "--pattern", "*_{band}_{date}.jp2", *o, *BASE],
              "TERRA_MODIS_012010_NDVI_2013-10-16.jp2")


def test_existing_region_refused_and_all_cloudy_skipped(wc, parcels_file, tmp_path, capsys):
    argv = ["extract", parcels_file, "--cube", WC, "--prefix", "S2-L2A-", "--band-map", "B8A=B08", "--out", tmp_path, *BASE]
    assert main([str(a) for a in argv]) == 0
    cli_error(capsys, argv, "already holds region 'r'", "--overwrite")
    assert main([str(a) for a in argv + ["--overwrite"]]) == 0
    ds = extract_parcels(wc, parcels_file, "id", "CODE_CULTU")
    m = ds["mean"].values.copy(); m[:5] = np.nan
    ds["mean"] = (ds["mean"].dims, m)
    write_breizhcrops(ds, tmp_path, "cloudy", band_map={"B8A": "B08"})
    idx = pd.read_csv(tmp_path / "2017" / "L2A" / "cloudy.csv")
    assert len(idx) == 35 and not set(ds.parcel.values[:5]) & set(idx["id"])
    m[:] = np.nan; ds["mean"] = (ds["mean"].dims, m)
    with pytest.raises(ValueError, match="only cloudy"): write_breizhcrops(ds, tmp_path, "allcloudy", band_map={"B8A": "B08"})
    assert not (tmp_path / "2017" / "L2A" / "allcloudy.csv").exists()


def _nodata_corner_tifs(folder, nodata=0):
    "Two dates x two bands of 4 x 4 uint16 GeoTIFFs, all 100 but the corner pixel, which is the declared no-data."
    import rasterio
    from rasterio.transform import from_origin
    for date in ("2021-01-01", "2021-02-01"):
        for band in ("B04", "B08"):
            a = np.full((4, 4), 100, np.uint16); a[0, 0] = nodata
            with rasterio.open(folder / f"S2_{band}_{date}.tif", "w", driver="GTiff", height=4, width=4, count=1,
                               dtype="uint16", crs="EPSG:32631", transform=from_origin(0, 40, 10, 10), nodata=nodata) as dst:
                dst.write(a, 1)


def test_declared_nodata_never_enters_a_parcel_mean(tmp_path):
    "A no-data value the files declare is masked by the reader: the parcel mean over the corner stays 100 (not 75)."
    _nodata_corner_tifs(tmp_path)
    corner = gpd.GeoDataFrame({"id": [1], "crop": ["BTH"]}, geometry=[shapely.box(0, 20, 20, 40)], crs="EPSG:32631")
    cube = open_images(tmp_path, "S2_{band}_{date}.tif")
    assert str(cube.dtype) == "float32" and np.isnan(cube.values[:, :, 0, 0]).all()
    ds = extract_parcels(cube, corner, "id")
    assert np.allclose(ds["mean"].values, 100.0) and np.allclose(ds["valid"].values, 3.0)


def test_stac_raster_extension_nodata_is_masked(tmp_path):
    "odc-stac reads each asset's raster:bands nodata; open_stac turns it into NaN."
    from cropkit.geo.cube import make_cube, pixel_centres
    import pystac
    x, y = pixel_centres((600000, 5000000, 600040, 5000040), (4, 4))
    v = np.full((2, 2, 4, 4), 100, np.uint16); v[:, :, 0, 0] = 0
    cat = write_stac_catalog(make_cube(v, ["2021-01-01", "2021-02-01"], ["B04", "B08"], x, y, "EPSG:32631"), tmp_path / "c")
    for item in pystac.Catalog.from_file(str(cat)).get_items():
        path = tmp_path / "c" / item.id / f"{item.id}.json"
        js = json.loads(path.read_text())
        for asset in js["assets"].values(): asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16"}]
        js["stac_extensions"].append("https://stac-extensions.github.io/raster/v1.1.0/schema.json")
        path.write_text(json.dumps(js))
    cube = open_stac(cat)
    assert np.isnan(cube.values[:, :, 0, 0]).all() and float(np.nanmin(cube.values)) == 100.0


def test_undeclared_nodata_is_named_by_the_cli(tmp_path, capsys, parcels_file):
    "WorldCereal's 65535 is declared nowhere: the CLI warns and names --nodata; with --nodata it is quiet."
    from cropkit.geo.cube import UndeclaredNoDataWarning
    args = ["extract", str(parcels_file), "--cube", str(WC), "--prefix", "S2-L2A-", "--bands", ",".join(S2),
            "--start", "2020-11-01", "--end", "2021-10-31", "--label-col", "CODE_CULTU", "--id-col", "id", "--band-map", "B8A=B08", "-q"]
    with pytest.warns(UndeclaredNoDataWarning, match="--nodata 65535"):
        assert main(args + ["--region", "a", "--out", str(tmp_path / "a")]) == 0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndeclaredNoDataWarning)
        assert main(args + ["--nodata", "65535", "--period", "month", "--region", "b", "--out", str(tmp_path / "b")]) == 0


def test_extract_checks_region_and_bands_before_extracting(wc, parcels_file, tmp_path, capsys, monkeypatch):
    """An existing region and a layout band the imagery lacks are refused before any pixel is read; variables the
    BreizhCrops layout does not take (Sentinel-1, slope, weather of the WorldCereal file) are not extracted."""
    import cropkit.geo.extract as ge
    args = ["extract", str(parcels_file), "--cube", str(WC), "--prefix", "S2-L2A-", "--nodata", "65535", "--start",
            "2020-11-01", "--end", "2021-10-31", "--label-col", "CODE_CULTU", "--id-col", "id", "--out", str(tmp_path)]
    import cropkit.geo.extract_cli as gx
    opened, cube_from_args = [], gx.cube_from_args
    monkeypatch.setattr(gx, "cube_from_args", lambda a, bands=None, **k: opened.append(bands) or cube_from_args(a, bands, **k))
    assert main(args + ["--region", "a", "--band-map", "B8A=B08"]) == 0
    assert opened == [None, S2]                      # reopened with the layout's bands only: the others are never read
    out = capsys.readouterr().out
    assert "not extracted (not in the BreizhCrops L2A layout): S1-SIGMA0-VH, S1-SIGMA0-VV, slope, elevation" in out
    assert "(12 dates, 9 bands)" in out
    monkeypatch.setattr(ge, "extract_parcels", lambda *a, **k: pytest.fail("extract_parcels ran"))
    assert main(args + ["--region", "a", "--band-map", "B8A=B08"]) == 2
    assert "already holds region 'a'" in capsys.readouterr().err
    assert main(args + ["--region", "b"]) == 2
    assert "lack the L2A band(s) ['B8A']" in capsys.readouterr().err


def test_stac_source_searched_once_when_reopened_with_layout_bands(wc, parcels_file, tmp_path, capsys, monkeypatch):
    "A catalog with an asset the layout does not take: opened twice (the second time without it), searched once."
    import xarray as xr
    import cropkit.geo.cube as gc
    extra = xr.concat([wc, wc.sel(band=["B02"]).assign_coords(band=["slope"])], dim="band")
    cat = write_stac_catalog(extra.isel(time=slice(0, 3)), tmp_path / "stac", "with-slope")
    searches, stac_items = [], gc.stac_items
    monkeypatch.setattr(gc, "stac_items", lambda *a, **k: searches.append(a) or stac_items(*a, **k))
    code = main(["extract", parcels_file, "--stac", cat, "--start", "2020-11-01", "--end", "2021-01-31", "--label-col",
                 "CODE_CULTU", "--id-col", "id", "--region", "r", "--out", tmp_path / "out", "--band-map", "B8A=B08"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "not extracted (not in the BreizhCrops L2A layout): slope" in out and "(3 dates, 9 bands)" in out
    assert len(searches) == 1
