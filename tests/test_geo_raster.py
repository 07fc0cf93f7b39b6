"""Map products as GeoTIFFs (cropkit.geo.raster) and post-processing (cropkit.geo.postprocess): round trips and bad input."""
import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
da = pytest.importorskip("dask.array")
from rasterio.transform import from_origin  # noqa: E402

from cropkit.geo.raster import (write_class_map, read_class_map, write_probabilities, read_probabilities,  # noqa: E402
                                write_uncertainty, write_map_products, map_info, class_areas, pixel_area_ha)
from cropkit.geo.postprocess import bayes_smooth, modal_filter  # noqa: E402

TF = from_origin(500_000, 5_000_000, 10, 10)
NAMES = ["wheat", "maize", "grass"]


def classes(h=70, w=90, seed=0):
    c = np.random.default_rng(seed).integers(0, 3, (h, w))
    c[:3, :3] = -1
    return c


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_class_map_round_trip_cog(tmp_path):
    path = write_class_map(tmp_path / "c.tif", da.from_array(classes(), chunks=(32, 40)), NAMES, crs="EPSG:32631",
                           transform=TF, colors=["#ff0000", "#00ff00", "#0000ff"])
    arr, info = read_class_map(path)
    assert (arr[3:] == classes()[3:]).all() and (arr[:3, :3] == 255).all()
    assert info.names == {0: "wheat", 1: "maize", 2: "grass"} and info.colors[2] == "#0000ff"
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.colormap(1)[0][:3] == (255, 0, 0) and src.nodata == 255 and src.crs.to_epsg() == 32631
        assert json.loads(src.tags()["CLASS_NAMES"]) == {"0": "wheat", "1": "maize", "2": "grass"}
    assert listing(tmp_path) == ["c.tif"]


def test_large_map_gets_overviews_and_is_written_window_by_window(tmp_path):
    calls = []
    def block(b):
        calls.append(b.shape)
        return b % 3
    big = da.arange(1024 * 1100, chunks=256 * 1100).reshape(1024, 1100).rechunk((256, 550)).map_blocks(block, dtype=np.int64)
    path = write_class_map(tmp_path / "big.tif", big, NAMES, crs="EPSG:32631", transform=TF)
    calls = [c for c in calls if c != (0, 0)]                          # dask probes the function once with an empty block
    assert len(calls) == 8 and max(h * w for h, w in calls) == 256 * 550      # one chunk in memory at a time
    with rasterio.open(path) as src:
        assert src.overviews(1) and src.block_shapes[0] == (512, 512)
        assert (src.read(1, window=((300, 301), (0, 4))) == (np.arange(300 * 1100, 300 * 1100 + 4) % 3)).all()


def test_existing_output_refused_unless_overwrite(tmp_path):
    path = write_class_map(tmp_path / "c.tif", classes(), NAMES, crs="EPSG:32631", transform=TF)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="c.tif already exists"):
        write_class_map(path, classes(seed=1), NAMES, crs="EPSG:32631", transform=TF)
    assert path.read_bytes() == before
    write_class_map(path, classes(seed=1), NAMES, crs="EPSG:32631", transform=TF, overwrite=True)
    assert (read_class_map(path)[0][3:] == classes(seed=1)[3:]).all()
    assert listing(tmp_path) == ["c.tif"]


def test_unwritable_output_path_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="cannot write class map .*file/c.tif"):
        write_class_map(tmp_path / "file" / "c.tif", classes(), NAMES, crs="EPSG:32631", transform=TF)
    with pytest.raises(PermissionError, match="/proc/cropkit/p.tif"):
        write_probabilities("/proc/cropkit/p.tif", np.full((3, 4, 4), 1 / 3), NAMES, crs="EPSG:32631", transform=TF)
    assert listing(tmp_path) == ["file"]


def test_failure_half_way_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = write_class_map(tmp_path / "c.tif", classes(), NAMES, crs="EPSG:32631", transform=TF)
    before = path.read_bytes()
    def block(b, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1): raise RuntimeError("disk full in chunk (1, 1)")
        return b
    bad = da.from_array(classes(), chunks=(32, 40)).map_blocks(block, dtype=np.int64)
    with pytest.raises(RuntimeError, match="chunk"):
        write_class_map(path, bad, NAMES, crs="EPSG:32631", transform=TF, overwrite=True)
    assert path.read_bytes() == before and listing(tmp_path) == ["c.tif"]


def test_bad_input_named(tmp_path):
    with pytest.raises(ValueError, match="has no CRS"):
        write_class_map(tmp_path / "c.tif", classes(), NAMES, transform=TF)
    with pytest.raises(ValueError, match=r"codes \[5\] that are not in names"):
        write_class_map(tmp_path / "c.tif", np.full((4, 4), 5), NAMES, crs="EPSG:32631", transform=TF)
    with pytest.raises(ValueError, match="nodata 2 is also the code of class 'grass'"):
        write_class_map(tmp_path / "c.tif", classes(), NAMES, crs="EPSG:32631", transform=TF, nodata=2)
    with pytest.raises(ValueError, match=r"colour 'nocolour' given for class 'maize'"):
        write_class_map(tmp_path / "c.tif", classes(), NAMES, crs="EPSG:32631", transform=TF, colors={"maize": "nocolour", "wheat": "r", "grass": "g"})
    with pytest.raises(ValueError, match="must lie in"):
        write_probabilities(tmp_path / "p.tif", np.full((3, 4, 4), 0.9) * 2, NAMES, crs="EPSG:32631", transform=TF)
    with pytest.raises(ValueError, match="must have 3 dimensions"):
        write_probabilities(tmp_path / "p.tif", np.zeros((4, 4)), NAMES, crs="EPSG:32631", transform=TF)
    with pytest.raises(FileNotFoundError, match="class map not found"):
        read_class_map(tmp_path / "missing.tif")
    assert listing(tmp_path) == []


def test_probabilities_uncertainty_and_products(tmp_path):
    p = np.random.default_rng(0).dirichlet([1, 2, 3], size=(20, 30)).transpose(2, 0, 1)
    p[:, 5, 5] = np.nan
    path = write_probabilities(tmp_path / "p.tif", p, NAMES, crs="EPSG:32631", transform=TF)
    back, names = read_probabilities(path)
    assert names == NAMES and np.isnan(back[:, 5, 5]).all()
    assert np.nanmax(np.abs(back - p)) <= 0.5 / 255 + 1e-6
    u = read_probabilities(write_uncertainty(tmp_path / "u.tif", p, "entropy", crs="EPSG:32631", transform=TF))[0][0]
    assert np.isnan(u[5, 5]) and 0 <= np.nanmin(u) and np.nanmax(u) <= 1
    paths = write_map_products(tmp_path / "m", da.from_array(p, chunks=(3, 8, 8)), NAMES, crs="EPSG:32631", transform=TF)
    assert sorted(x.name for x in paths.values()) == ["m_class.tif", "m_probs.tif", "m_uncertainty.tif"]
    assert read_class_map(paths["class"])[0][5, 5] == 255


def test_sits_probability_cube_needs_its_scale():
    from cropkit.core import data_path
    f = data_path("sits_sinop", "sinop_2014_probs_2013-09-01_2014-08-30_v1.tif")
    with pytest.raises(ValueError, match="pass scale="):
        read_probabilities(f)
    probs, names = read_probabilities(f, scale=1e-4)
    assert probs.shape == (9, 50, 50) and names[0] == "lyr.1"
    assert np.allclose(probs.sum(0), 1, atol=5e-4)


def test_pixel_and_class_areas_geographic(tmp_path):
    path = write_class_map(tmp_path / "g.tif", np.zeros((10, 10), int), ["a"], crs="EPSG:4326",
                           transform=from_origin(10, 60, 0.001, 0.001))
    rows = pixel_area_ha("EPSG:4326", from_origin(10, 60, 0.001, 0.001), 10)
    assert np.all(np.diff(rows) > 0)                                   # southwards the cells grow
    assert abs(rows[0] - 0.6217) < 0.002                               # ~ 55.8 m x 111.4 m at 60° N
    assert abs(class_areas(path)["area_ha"].iloc[0] - rows.sum() * 10) < 1e-9
    with pytest.raises(ValueError, match="rotated"):
        pixel_area_ha("EPSG:4326", (0.001, 0.0001, 10, 0.0001, -0.001, 60), 3)


def test_postprocess_bad_input():
    with pytest.raises(ValueError, match="odd integer"):
        bayes_smooth(np.full((2, 5, 5), 0.5), window_size=6)
    with pytest.raises(TypeError, match="integer codes"):
        modal_filter(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="needed as edge filler"):
        modal_filter(np.array([[255, 1]], dtype=np.uint8))
    assert (modal_filter(np.array([[255, 1, 1]], dtype=np.uint8), nodata=255) == [[255, 1, 1]]).all()
