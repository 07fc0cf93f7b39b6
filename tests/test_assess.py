"""Map accuracy and area (cropkit.evaluate.area): `assess`, the estimators and the CLI, with bad input."""
import contextlib, io, json, warnings

import numpy as np
import pandas as pd
import pytest

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")
from rasterio.transform import from_origin  # noqa: E402
from shapely.geometry import Point, box  # noqa: E402

from cropkit.cli import main  # noqa: E402
from cropkit.evaluate.area import area_accuracy, assess, stratified_sample, read_reference  # noqa: E402
from cropkit.geo.raster import write_class_map  # noqa: E402

TF = from_origin(500_000, 5_000_000, 10, 10)      # 10 m pixels, UTM 31N
NAMES = ["wheat", "maize", "grass"]


@pytest.fixture
def class_map(tmp_path):
    "A 60 x 60 map: wheat in the top half, maize bottom-left, grass bottom-right; one no-data pixel."
    c = np.zeros((60, 60), int)
    c[30:, :30], c[30:, 30:] = 1, 2
    c[0, 0] = -1
    return write_class_map(tmp_path / "map.tif", c, NAMES, crs="EPSG:32631", transform=TF)


def pixel_centre(row, col):
    return Point(500_000 + 10 * col + 5, 5_000_000 - 10 * row - 5)


def samples(labels_and_pixels, crs="EPSG:32631"):
    pts = [pixel_centre(r, c) for _, (r, c) in labels_and_pixels]
    return gpd.GeoDataFrame({"crop": [lab for lab, _ in labels_and_pixels]}, geometry=pts, crs="EPSG:32631").to_crs(crs)


GOOD = [("wheat", (5, 5)), ("wheat", (10, 40)), ("maize", (12, 12)),          # 2 right, 1 wheat pixel is maize
        ("maize", (40, 5)), ("maize", (50, 20)), ("grass", (45, 10)),          # 2 right, 1 maize pixel is grass
        ("grass", (40, 40)), ("grass", (55, 55)), ("grass", (35, 50))]         # all right


def counts_of(report):
    return [[report["error_matrix_counts"][m][r] for r in NAMES] for m in NAMES]


def test_assess_end_to_end_with_reprojection(class_map, tmp_path):
    ref = tmp_path / "ref.gpkg"
    samples(GOOD, crs="EPSG:4326").to_file(ref)                                 # samples in lon/lat, map in UTM
    acc = assess(class_map, ref, "crop", out=tmp_path / "report.json")
    rep = json.loads((tmp_path / "report.json").read_text())
    assert counts_of(rep) == [[2, 1, 0], [0, 2, 1], [0, 0, 3]]
    expected = area_accuracy([[2, 1, 0], [0, 2, 1], [0, 0, 3]], [30 * 60 - 1, 900, 900], NAMES, pixel_area_ha=0.01)
    assert rep["area_ha"] == pytest.approx(expected.area_ha.to_dict())
    assert rep["mapped_area_ha"] == pytest.approx({"wheat": 17.99, "maize": 9.0, "grass": 9.0})
    for key in ("overall_accuracy", "users_accuracy", "producers_accuracy", "area_ha", "area_ci95_ha", "mapped_area_ha",
                "overall_accuracy_se", "users_accuracy_se", "producers_accuracy_se", "area_se_ha"):
        assert key in rep
    assert rep["samples"] == {"total": 9, "used": 9, "outside_map": 0, "on_nodata": 0}
    assert rep["pixel_area_ha"] == pytest.approx(0.01) and rep["crs"] == "EPSG:32631"
    assert "overall accuracy" in str(acc)


def test_csv_with_lon_lat_columns(class_map, tmp_path):
    s = samples(GOOD, crs="EPSG:4326")
    csv = tmp_path / "ref.csv"
    pd.DataFrame({"E": s.geometry.x, "N": s.geometry.y, "crop": s.crop}).to_csv(csv, index=False)
    with pytest.raises(KeyError, match="no longitude column .*'E', 'N', 'crop'"):
        assess(class_map, csv, "crop")
    acc = assess(class_map, csv, "crop", lon_col="E", lat_col="N")
    assert acc.counts.to_numpy().tolist() == [[2, 1, 0], [0, 2, 1], [0, 0, 3]]


def test_samples_outside_the_map_and_on_nodata_are_counted(class_map, tmp_path):
    s = samples(GOOD + [("wheat", (0, 0))])                                     # the no-data pixel
    s = pd.concat([s, gpd.GeoDataFrame({"crop": ["grass", "maize"]}, geometry=[Point(400_000, 5_000_000), Point(500_100, 4_000_000)],
                                       crs="EPSG:32631")], ignore_index=True)
    with pytest.warns(UserWarning, match="2 of 12 reference samples fall outside the map map.tif and 1 on no-data"):
        acc = assess(class_map, s, "crop")
    assert acc.info["samples"] == {"total": 12, "used": 9, "outside_map": 2, "on_nodata": 1}
    assert acc.counts.to_numpy().sum() == 9


def test_all_samples_outside_real_map():
    from cropkit.core import data_path
    with pytest.raises(ValueError, match="none of the 18 reference samples .*18 outside the map"):
        assess(data_path("sits_sinop", "SENTINEL2_MSI_20LNR_2020-06-04_2021-08-26_class_v1.tif"),
               data_path("sits_sinop", "samples_sinop_crop.csv"), "label")


def test_reference_classes_the_map_lacks_are_named(class_map):
    s = samples(GOOD + [("rapeseed", (20, 20)), ("rapeseed", (21, 20)), ("oats", (22, 20))])
    with pytest.raises(ValueError, match=r"reference classes \['rapeseed', 'oats'\] \(rapeseed: 2, oats: 1 samples\) are not classes of the map"):
        assess(class_map, s, "crop")


def test_missing_crs_named(class_map, tmp_path):
    with pytest.raises(ValueError, match="the reference GeoDataFrame has no CRS"):
        assess(class_map, samples(GOOD).set_crs(None, allow_override=True), "crop")
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", transform=TF) as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=f"class map {nocrs} has no CRS"):
        assess(nocrs, samples(GOOD), "crop")
    shp = tmp_path / "ref.shp"
    samples(GOOD).to_file(shp)
    shp.with_suffix(".prj").unlink()
    with pytest.raises(ValueError, match=f"reference file {shp} has no CRS"):
        assess(class_map, shp, "crop")


def test_label_column_that_does_not_exist(class_map):
    with pytest.raises(KeyError, match=r"label column 'label' is not in the reference GeoDataFrame; its columns are \['crop'\]"):
        assess(class_map, samples(GOOD), "label")
    with pytest.raises(ValueError, match=r"rows \[1\] have no 'crop' label"):
        read_reference(samples(GOOD).assign(crop=["wheat", None] + ["grass"] * 7), "crop")


def test_existing_and_unwritable_report(class_map, tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(FileExistsError, match="report .*report.json already exists"):
        assess(class_map, samples(GOOD), "crop", out=out)
    assert out.read_text() == "old"
    assess(class_map, samples(GOOD), "crop", out=out, overwrite=True)
    assert json.loads(out.read_text())["samples"]["used"] == 9
    with pytest.raises(PermissionError, match="cannot write report .*report.json/r.json"):
        assess(class_map, samples(GOOD), "crop", out=out / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "report.json"]


def test_polygons_centroid_and_majority(tmp_path):
    c = np.ones((20, 20), int)
    c[10, 10] = 0                                                             # one wheat pixel inside a maize field
    m = write_class_map(tmp_path / "m.tif", c, NAMES[:2], crs="EPSG:32631", transform=TF)
    square = box(500_000 + 10 * 7, 5_000_000 - 10 * 14, 500_000 + 10 * 14, 5_000_000 - 10 * 7)   # centroid on pixel (10, 10)
    s = gpd.GeoDataFrame({"crop": ["maize", "maize", "wheat"]}, geometry=[square, pixel_centre(2, 2), pixel_centre(10, 10)], crs="EPSG:32631")
    assert assess(m, s, "crop", polygons="majority").counts.loc["maize", "maize"] == 2
    assert assess(m, s, "crop", polygons="centroid").counts.loc["wheat", "maize"] == 1
    with pytest.raises(ValueError, match="polygons must be one of"):
        assess(m, s, "crop", polygons="mean")


def test_error_matrix_bad_input():
    with pytest.raises(ValueError, match="classes \\['b'\\] have zero mapped area"):
        area_accuracy([[3, 1], [0, 2]], {"a": 10, "b": 0}, ["a", "b"])
    with pytest.raises(ValueError, match="negative, e.g. -1.0 at map class 'b', reference class 'a'"):
        area_accuracy([[3, 1], [-1, 2]], [10, 5], ["a", "b"])
    with pytest.raises(ValueError, match="mapped_area must be finite and >= 0"):
        area_accuracy([[3, 1], [1, 2]], [10, -5], ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert area_accuracy([[3, 1], [1, 2]], [10, 5], ["a", "b"]).overall_accuracy == pytest.approx(2 / 3 * 3 / 4 + 1 / 3 * 2 / 3)


def test_stratified_sample_refuses_too_many(class_map):
    with pytest.raises(ValueError, match="class 'maize' has 900 pixels, fewer than the 901 samples"):
        stratified_sample(class_map, {"maize": 901})
    with pytest.raises(ValueError, match="class 'rye' is not a class of the map"):
        stratified_sample(class_map, {"rye": 3})


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_assess_and_sample_design(class_map, tmp_path):
    ref = tmp_path / "ref.gpkg"
    samples(GOOD).to_file(ref)
    report = tmp_path / "report.json"
    code, out, err = run(["assess", class_map, "--reference", ref, "--label-col", "crop", "--out", report])
    assert code == 0 and "overall accuracy" in out and json.loads(report.read_text())["samples"]["used"] == 9
    before = report.read_bytes()
    code, _, err = run(["assess", class_map, "--reference", ref, "--label-col", "crop", "--out", report])
    assert code == 2 and err.count("\n") == 1 and "report.json already exists" in err and report.read_bytes() == before
    code, _, err = run(["assess", class_map, "--reference", ref, "--label-col", "nope"])
    assert code == 2 and "label column 'nope'" in err
    pts = tmp_path / "points.gpkg"
    code, out, _ = run(["sample-design", class_map, "--expected-ua", "wheat=0.9,maize=0.8,grass=0.7", "--target-se", "0.05",
                        "--allocation", "10", "--out", pts, "--seed", "3"])
    assert code == 0 and "points written" in out
    got = gpd.read_file(pts)
    assert got.groupby("map_class").size().min() >= 10 and got.crs.to_epsg() == 32631
    code, _, err = run(["sample-design", class_map, "--expected-ua", "wheat=0.9", "--out", tmp_path / "p2.gpkg"])
    assert code == 2 and "expected_ua must give one value per class" in err and not (tmp_path / "p2.gpkg").exists()


def test_class_the_map_never_shows(tmp_path):
    "A map that declares grass but shows none: grass samples still count, and grass gets an area from the other strata."
    c = np.zeros((60, 60), int)
    c[30:, :] = 1
    path = write_class_map(tmp_path / "nograss.tif", c, NAMES, crs="EPSG:32631", transform=TF)
    ref = samples([("wheat", (5, 5)), ("wheat", (6, 6)), ("grass", (7, 7)), ("maize", (40, 5)), ("maize", (41, 5)),
                   ("grass", (50, 50))])
    acc = assess(path, ref, "crop")
    assert acc.classes == ["wheat", "maize", "grass"]
    assert acc.mapped_area_ha["grass"] == 0 and np.isnan(acc.users_accuracy["grass"])
    # grass: 1 of the 3 wheat-stratum samples and 1 of the 3 maize-stratum samples, each stratum half of 36 ha
    assert acc.area_ha["grass"] == pytest.approx(36 * (0.5 / 3 + 0.5 / 3))
    assert acc.area_ha.sum() == pytest.approx(36.0)
    assert acc.overall_accuracy == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
