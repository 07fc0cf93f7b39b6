"Bad input, missing optional packages and file output of cropkit.viz.maps and cropkit.viz.explore."
import json, re, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from cropkit.core import data_path
from cropkit.train import Predictions
from cropkit.viz import maps
from cropkit.viz.maps import (attach_predictions, label_image, label_overlay, parcel_figure, parcel_map, points_map,
                              read_parcels, rpg_parcels, save)

RPG = data_path("rpg_parcels", "rpg2022_fiboa_sample_wgs84.geojson")
INSTALL = 'pip install "cropkit[viz]"'
TILE_URL = re.compile(r"tile\.openstreetmap|\{z\}/\{x\}/\{y\}|arcgisonline|cartocdn|stamen")


@pytest.fixture(scope="module")
def rpg():
    return rpg_parcels()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def feature_collection(*features):
    return {"type": "FeatureCollection", "features": list(features)}


def square(i=0, **props):
    x = 2.0 + 0.01 * i
    ring = [[x, 48.0], [x + 0.005, 48.0], [x + 0.005, 48.005], [x, 48.005], [x, 48.0]]
    return {"type": "Feature", "properties": {"id": i, **props}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


# --- missing optional packages ------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["folium", "branca.element"])
def test_missing_folium_names_the_install_command(monkeypatch, rpg, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape(INSTALL)) as e:
        parcel_map(rpg, centroids=False)
    assert "'folium'" in str(e.value) or "'branca'" in str(e.value)   # folium cannot import without branca


def test_missing_geopandas_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "geopandas", None)
    with pytest.raises(ImportError, match="'geopandas'.*" + re.escape(INSTALL)):
        read_parcels(RPG)


def test_missing_folium_for_overlays(monkeypatch):
    monkeypatch.setitem(sys.modules, "folium", None)
    with pytest.raises(ImportError, match="label overlays needs the optional package 'folium'"):
        label_overlay(np.zeros((4, 4), int), [[48, 2], [48.1, 2.1]], level=1)


def test_static_figures_work_without_folium(monkeypatch, rpg, tmp_path):
    monkeypatch.setitem(sys.modules, "folium", None)
    assert save(parcel_figure(rpg, figsize=(3, 3)), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert save(label_image(np.ones((4, 4), int), level=1, figsize=(3, 2)), tmp_path / "l.png").stat().st_size > 0


def test_missing_ipywidgets_and_no_kernel(monkeypatch, capsys):
    from cropkit.data.victoria import victoria
    from cropkit.viz.explore import ParcelExplorer
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    ex = ParcelExplorer(victoria()[1], context=3)
    with pytest.raises(ImportError, match=re.escape(INSTALL)):
        ex.widget
    assert ex.show() is None                                   # no kernel here: explains instead of failing
    out = capsys.readouterr().out
    assert "JupyterLab" in out and ".select(" in out
    ex.select(class_name="Water")                             # the figure still updates without widgets
    assert ex.state["class_name"] == "Water" and ex.figure.axes[0].lines


# --- bad GeoJSON and parcels -------------------------------------------------------------------------------
def test_invalid_json_file_names_the_path(tmp_path):
    bad = tmp_path / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(ValueError, match="broken.geojson is not valid JSON"):
        read_parcels(bad)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="parcel file not found: .*nope.geojson"):
        read_parcels("nope.geojson")


@pytest.mark.parametrize("data, message", [
    ({"type": "Polygon", "coordinates": []}, "expected a FeatureCollection or a Feature, got 'Polygon'"),
    ([1, 2], "a GeoJSON dict or a path, got list"),
    (feature_collection(), "no features"),
    ({"type": "FeatureCollection", "features": {"a": 1}}, "'features' must be a list"),
    (feature_collection(square(0), {"type": "Feature", "properties": {"id": 5}}), r"feature 1 \(id 5\) has no valid geometry"),
    (feature_collection(square(0), {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}),
     "feature 1 has an invalid Polygon geometry"),
])
def test_bad_geojson_dicts(data, message):
    with pytest.raises((ValueError, TypeError), match=message):
        read_parcels(data)


def test_projected_coordinates_without_crs(rpg):
    lambert = rpg.to_crs("EPSG:2154").set_crs(None, allow_override=True)
    with pytest.raises(ValueError, match="has no CRS .*EPSG:2154"):
        read_parcels(lambert)


def test_other_formats_are_reprojected(rpg, tmp_path):
    path = tmp_path / "parcels.gpkg"
    rpg.iloc[:5].drop(columns=["parcel_id"]).to_crs("EPSG:2154").to_file(path)
    back = read_parcels(path)
    assert back.crs.to_epsg() == 4326 and back.parcel_id.tolist() == rpg.parcel_id[:5].tolist()
    np.testing.assert_allclose(back.total_bounds, rpg.iloc[:5].total_bounds, atol=1e-6)


def test_duplicate_ids_are_named():
    with pytest.raises(ValueError, match=r"\['3'\] occur more than once"):
        read_parcels(feature_collection(square(0, id=3), square(1, id=3)))


def test_class_column_or_code_needed():
    with pytest.raises(KeyError, match="needs the class column 'classname'"):
        parcel_map(feature_collection(square(0), square(1)))


def test_geojson_parcels_without_codes_colour_by_any_column(tmp_path):
    path = tmp_path / "p.geojson"
    path.write_text(json.dumps(feature_collection(square(0, crop="a"), square(1, crop="b"), square(2, crop="a"))))
    m = parcel_map(path, "crop", legend_title="my crops")
    html = m.get_root().render()
    assert "my crops" in html and "cropkit-legend" in html


# --- predictions and series that do not match the parcels ---------------------------------------------------
def preds(ids, n_classes=9):
    ids = np.asarray(ids)
    y = np.arange(len(ids)) % n_classes
    return Predictions(y, y, np.eye(n_classes)[y], ids)


def test_prediction_ids_not_in_parcels_are_named(rpg):
    with pytest.raises(ValueError, match=r"2 prediction field ids are not parcel ids of the parcels: \['123456', '777'\]"):
        parcel_map(rpg, "prediction", predictions=preds([19, 20, 123456, 777]), classes=list(maps.BREIZHCROPS_COLORS))
    m = parcel_map(rpg, "prediction", predictions=preds([19, 20, 123456, 777]), classes=list(maps.BREIZHCROPS_COLORS),
                   strict=False, centroids=False)
    assert len(m.get_root().render()) > 0


def test_no_matching_prediction_id(rpg):
    with pytest.raises(ValueError, match=r"none of the 2 prediction field ids .*\['FR-1', 'FR-2'\]"):
        attach_predictions(rpg, preds(["FR-1", "FR-2"]), list(maps.BREIZHCROPS_COLORS))


def test_prediction_class_index_out_of_range(rpg):
    with pytest.raises(ValueError, match=r"predicted class index 3 is outside the 3 classes \['a', 'b', 'c'\]"):
        parcel_map(rpg, "prediction", predictions=preds(rpg.parcel_id[:9]), classes=["a", "b", "c"])


def test_prediction_mode_needs_predictions(rpg):
    with pytest.raises(ValueError, match="color_by='correct' needs predictions"):
        parcel_map(rpg, "correct")


def test_ndvi_ids_must_match(rpg):
    with pytest.raises(ValueError, match=r"none of the 1 NDVI series ids .*\['x'\]"):
        parcel_map(rpg, ndvi={"x": [0.1, 0.5]})


def test_points_bad_coordinates_named():
    pts = pd.DataFrame({"id": [1, 2, 3], "classname": ["a", "b", "a"], "lon": [10, 200, 11], "lat": [45, 45, np.nan]})
    with pytest.raises(ValueError, match=r"2 points .*\(ids \[2, 3\]\)"):
        points_map(pts)


def test_colour_list_needs_classes(rpg):
    with pytest.raises(ValueError, match="colours were given as a list"):
        parcel_map(rpg, colors=["red", "blue"])


# --- H2Crop maps ------------------------------------------------------------------------------------------
def test_label_maps_bad_input():
    with pytest.raises(ValueError, match="ids outside level 1 .*id 9: 16 px"):
        label_image(np.full((4, 4), 9), level=1)
    with pytest.raises(ValueError, match="level must be one of"):
        label_image(np.zeros((4, 4), int), level=5)
    with pytest.raises(ValueError, match="south < north"):
        label_overlay(np.zeros((4, 4), int), [[48.1, 2], [48.0, 2.1]], level=1)


def test_label_image_from_tensor_stack():
    from cropkit.data.h2crop import default_taxonomy
    tax = default_taxonomy()
    stack = torch.as_tensor(tax.expand(np.array([[1, 2], [3, 0]])))
    fig = label_image(stack, tax, level=4, figsize=(3, 2))
    assert fig.axes[0].images[0].get_array().shape == (2, 2, 3)


# --- saving ----------------------------------------------------------------------------------------------
def test_save_map_html_has_no_tiles(rpg, tmp_path):
    text = save(parcel_map(rpg), tmp_path / "m.html").read_text(encoding="utf-8")
    assert "cropkit-legend" in text and not TILE_URL.search(text)
    online = save(parcel_map(rpg, tiles="OpenStreetMap", centroids=False), tmp_path / "osm.html").read_text(encoding="utf-8")
    assert TILE_URL.search(online)                            # the check above would catch tiles


def test_save_map_as_png_is_refused(rpg, tmp_path):
    with pytest.raises(ValueError, match=r"cannot save a folium map as 'm.png': use one of the suffixes \['.html'\].*parcel_figure"):
        save(parcel_map(rpg, centroids=False), tmp_path / "m.png")


def test_save_figures_in_several_formats(rpg, tmp_path):
    fig = parcel_figure(rpg, "crop_group", legend=False, figsize=(3, 3))
    assert save(fig, tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert save(fig, tmp_path / "f.jpg").read_bytes()[:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="use one of the suffixes"):
        save(fig, tmp_path / "f.tiff")
    assert not list(tmp_path.glob(".*part"))                  # no temporary files left behind


def test_save_holoviews_bokeh_and_widgets(tmp_path):
    import holoviews as hv
    import ipywidgets
    from bokeh.plotting import figure
    curve = hv.Curve([(0, 0.1), (1, 0.6), (2, 0.3)])
    assert "Bokeh" in save(curve, tmp_path / "c.html").read_text(encoding="utf-8")
    assert save(curve, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    p = figure(width=200, height=150); p.line([0, 1], [1, 0])
    assert "<html" in save(p, tmp_path / "b.html").read_text(encoding="utf-8").lower()
    with pytest.raises(ValueError, match="export_png"):
        save(p, tmp_path / "b.png")
    assert "application/vnd.jupyter.widget-state" in save(ipywidgets.IntSlider(3), tmp_path / "w.html").read_text(encoding="utf-8")


def test_save_refuses_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="cannot save an object of type builtins.dict"):
        save({}, tmp_path / "x.html")


# --- explorers: bad input ----------------------------------------------------------------------------------
def test_explorer_bad_datasets():
    from cropkit.viz.explore import H2CropViewer, ParcelExplorer

    class NoClasses(torch.utils.data.Dataset):
        def __len__(self): return 1
        def __getitem__(self, i): return torch.zeros(3, 2), torch.tensor(0), 0

    with pytest.raises(AttributeError, match="dataset 'data' has no `classes`"):
        ParcelExplorer(NoClasses())
    with pytest.raises(ValueError, match="no datasets given"):
        ParcelExplorer({})
    with pytest.raises(TypeError, match="H2Crop dataset, a sample dict"):
        H2CropViewer(np.zeros((3, 3)))
    with pytest.raises(KeyError, match="no 'label'"):
        H2CropViewer({"S2": np.zeros((2, 10, 3, 3))})
    with pytest.raises(ValueError, match="'S2' must be"):
        H2CropViewer({"S2": np.zeros((2, 10, 3, 4)), "label": np.zeros((4, 3, 3), int)})


# --- integration: a BreizhCrops region on a map -------------------------------------------------------------
def test_breizhcrops_geodataframe_with_predictions_and_ndvi(tmp_path):
    from cropkit.data.breizhcrops import BreizhCrops
    from cropkit.data.synthetic import make_breizhcrops
    ds = BreizhCrops("frh01", root=make_breizhcrops(tmp_path, n_parcels=20, shapefile=True))
    gdf = ds.geodataframe()                                    # Lambert-93 polygons, id + CODE_CULTU + classname
    ids = ds.index["id"].to_numpy()
    y = ds.index["classid"].to_numpy()
    y_pred = np.where(np.arange(len(y)) % 3 == 0, (y + 1) % ds.num_classes, y)
    pred = Predictions(y, y_pred, np.eye(ds.num_classes)[y_pred], ids)
    m = parcel_map(gdf, "correct", predictions=pred, classes=ds.classes, ndvi=ds.to_xarray(bands=["B4", "B8"]))
    layer = next(c for c in m._children.values() if type(c).__name__ == "GeoJson")
    popups = [f["properties"]["_popup"] for f in layer.data["features"]]
    assert len(popups) == len(gdf) and all("<svg" in p for p in popups)
    assert sum("✘ incorrect" in p for p in popups) == int((y_pred != y).sum())
    assert any(name in " ".join(popups) for name in ds.index["cropname"].str.split("'").str[0])   # crop names
