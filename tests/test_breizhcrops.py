"""Integration and bad-input tests of `cropkit.data.breizhcrops` on small synthetic layouts (see `cropkit.data.synthetic`)."""
import shutil, sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cropkit.core import data_path
from cropkit.data.breizhcrops import (COLUMNS, DEFAULT_BANDS, REGIONS, BreizhCrops, breizhcrops_paths,
                                      compile_h5_from_csv, default_transform, read_classmapping, read_codes,
                                      read_index, write_h5)
from cropkit.data.synthetic import make_breizhcrops


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    "A pristine synthetic layout: frh01 and frh04 (L1C, raw CSVs, shapefiles), frh04 L2A. Copy it before damaging it."
    root = tmp_path_factory.mktemp("bc")
    make_breizhcrops(root, regions=("frh01", "frh04"), n_parcels=40, raw_csv=True, shapefile=True)
    make_breizhcrops(root, regions="frh04", level="L2A", n_parcels=40)
    return root


@pytest.fixture
def root(layout, tmp_path):
    "A private copy of the layout, free to damage."
    return Path(shutil.copytree(layout, tmp_path/"bc"))


def _paths(root, region="frh04", level="L1C"): return breizhcrops_paths(root, region, 2017, level)


def _rewrite_h5(path, change):
    "Rewrite the h5 file at `path` with `change(dict key -> array)` applied."
    with h5py.File(path, "r") as f:
        data = {}
        f.visititems(lambda k, o: data.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    change(data)
    write_h5(path, list(data), list(data.values()))


# --- real sample files ------------------------------------------------------------------------------

def test_real_classmapping_and_codes():
    mapping = read_classmapping(data_path("breizhcrops", "classmapping.csv"))
    assert len(mapping) == 23 and mapping["id"].nunique() == 9
    codes = read_codes(data_path("breizhcrops", "codes.csv"))
    assert set(mapping.index) <= set(codes.index)


def test_real_index_head():
    mapping = read_classmapping(data_path("breizhcrops", "classmapping.csv"))
    index = read_index(data_path("breizhcrops", "frh04_L1C_2017_index_head20.csv"), mapping)
    raw = pd.read_csv(data_path("breizhcrops", "frh04_L1C_2017_index_head20.csv"))
    assert index["classid"].tolist() == raw["classid"].tolist()
    assert index.index.tolist() == raw["idx"].tolist()


# --- integration ------------------------------------------------------------------------------------

def test_items_and_attributes(layout):
    ds = BreizhCrops("frh04", root=layout)
    index = pd.read_csv(layout/"2017"/"L1C"/"frh04.csv")
    mapping = read_classmapping(layout/"classmapping.csv")
    kept = index[index["CODE_CULTU"].isin(mapping.index)]
    assert len(ds) == len(kept) < len(index)
    for i in (0, len(ds) // 2, len(ds) - 1):
        X, y, fid = ds[i]
        assert X.shape == (45, 13) and X.dtype == torch.float32 and y.dtype == torch.int64
        assert fid == kept["id"].iloc[i] and int(y) == mapping.loc[kept["CODE_CULTU"].iloc[i], "id"]
    assert ds.num_classes == 9 and ds.bands == DEFAULT_BANDS["L1C"] and ds.sequencelength == 45
    assert (ds.h5path, ds.indexfile) == (str(_paths(layout).h5), str(_paths(layout).index))
    X, y, ids = next(iter(DataLoader(ds, batch_size=16, num_workers=2)))
    assert X.shape == (16, 45, 13) and ids.tolist() == kept["id"].iloc[:16].tolist()


def test_default_item_matches_reference_transform(layout):
    ref = pytest.importorskip("breizhcrops.datasets.breizhcrops")
    ds = BreizhCrops("frh04", root=layout)
    raw = ds.raw_series(3)
    np.random.seed(11); ours = ds[3][0]
    np.random.seed(11); theirs = ref.get_default_transform("L1C")(raw)
    assert torch.equal(ours, theirs)


def test_own_region_name_and_belle_ile_spelling(tmp_path):
    make_breizhcrops(tmp_path, regions=("my_farm", "belle-ile"), n_parcels=25)
    assert len(BreizhCrops("my_farm", root=tmp_path)) > 0
    assert BreizhCrops("belleile", root=tmp_path).region == "belle-ile"
    assert "belle-ile" in REGIONS


def test_own_year_folder(tmp_path):
    make_breizhcrops(tmp_path, regions="frh01", year=2021, n_parcels=25)
    ds = BreizhCrops("frh01", root=tmp_path, year=2021)
    doa = pd.to_datetime(ds.raw_series(0)[:, -1].astype(np.int64))
    assert (doa.year == 2021).all()


def test_recompile_from_csv(root):
    p = _paths(root)
    with h5py.File(p.h5, "r") as f: before = {k: f[k][()] for k in pd.read_csv(p.index)["path"]}
    p.h5.unlink()
    ds = BreizhCrops("frh04", root=root, recompile_h5_from_csv=True)
    assert p.h5.exists() and len(ds) > 0
    with h5py.File(p.h5, "r") as f: assert all(np.array_equal(f[k][()], v) for k, v in before.items())


def test_recompile_replaces_corrupt_h5(root):
    p = _paths(root)
    p.h5.write_bytes(p.h5.read_bytes()[:2000])
    assert BreizhCrops("frh04", root=root, recompile_h5_from_csv=True)[0][0].shape == (45, 13)


def test_compile_without_index_any_region(root):
    src = _paths(root).csvfolder
    dst = _paths(root, "parcels_2017").csvfolder
    dst.mkdir(parents=True)
    for f in list(src.glob("*.csv"))[:10]: shutil.copy(f, dst/f.name)
    compile_h5_from_csv(root, "parcels_2017")
    ds = BreizhCrops("parcels_2017", root=root)
    assert 0 < len(ds) <= 10 and ds.index["path"].str.startswith("csv/parcels_2017/").all()


def test_filter_length_and_verbose_counts(layout, capsys):
    ds = BreizhCrops("frh04", root=layout, verbose=True)
    out = capsys.readouterr().out
    n_all = len(pd.read_csv(layout/"2017"/"L1C"/"frh04.csv"))
    assert f"kept {len(ds)} of {n_all}" in out and f"dropped {n_all - len(ds)}" in out
    cut = int(ds.index["sequencelength"].median())
    short = BreizhCrops("frh04", root=layout, filter_length=cut, verbose=True)
    assert (short.index["sequencelength"] > cut).all()
    assert f"filter_length={cut}" in capsys.readouterr().out


def test_preload_ram_matches_disk(layout, tmp_path):
    root = Path(shutil.copytree(layout, tmp_path/"bc"))
    disk = BreizhCrops("frh04", root=root, transform=np.asarray)
    ram = BreizhCrops("frh04", root=root, transform=np.asarray, preload_ram=True)
    assert ram.packed is not None and len(ram.packed) == len(disk)
    for i in range(len(disk)):
        np.testing.assert_allclose(ram[i][0], disk[i][0], rtol=1e-6)


def test_to_xarray(layout):
    ds = BreizhCrops("frh04", root=layout, level="L2A")
    da = ds.to_xarray(indices=[0, 1, 2], bands=["B4", "B8"])
    assert da.dims == ("parcel", "time", "band") and list(da.band.values) == ["B4", "B8"]
    assert da["date"].dtype == np.dtype("datetime64[ns]")
    assert da["label"].values.tolist() == ds.index["classid"].iloc[:3].tolist()


def test_geodataframe(layout):
    pytest.importorskip("geopandas")
    gdf = BreizhCrops("frh04", root=layout).geodataframe()
    assert gdf.geometry.notna().all() and gdf.crs.to_epsg() == 2154


def test_pickle_for_spawned_workers(layout):
    import pickle
    ds = BreizhCrops("frh04", root=layout)
    ds[0]                                                          # opens the h5 handle
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.raw_series(0), ds.raw_series(0))


# --- bad input ----------------------------------------------------------------------------------------

def test_unknown_level_and_year(layout):
    with pytest.raises(ValueError, match="unknown level 'L1'"): BreizhCrops("frh04", root=layout, level="L1")
    with pytest.raises(ValueError, match="unknown year 2016"): BreizhCrops("frh04", root=layout, year=2016)
    with pytest.raises(ValueError, match="'2017a'"): BreizhCrops("frh04", root=layout, year="2017a")
    with pytest.raises(ValueError, match="filter_length"): BreizhCrops("frh04", root=layout, filter_length=-3)


def test_missing_index(root):
    _paths(root).index.unlink()
    with pytest.raises(FileNotFoundError, match=r"frh04\.csv.*download=True"): BreizhCrops("frh04", root=root)


def test_missing_h5(root):
    _paths(root).h5.unlink()
    with pytest.raises(FileNotFoundError, match=r"frh04\.h5.*download=True.*recompile_h5_from_csv=True"):
        BreizhCrops("frh04", root=root)
    assert len(BreizhCrops("frh04", root=root, load_timeseries=False)) > 0      # the index alone is fine


def test_missing_region_names_the_region(root):
    with pytest.raises(FileNotFoundError, match="'nowhere' is not an official BreizhCrops region"):
        BreizhCrops("nowhere", root=root)


def test_missing_mapping_and_codes_fall_back_to_shipped(root, capsys):
    (root/"classmapping.csv").unlink(); (root/"codes.csv").unlink()
    ds = BreizhCrops("frh04", root=root, verbose=True)
    assert ds.num_classes == 9 and len(ds.codes) == 328
    assert "classmapping.csv not found" in capsys.readouterr().out


def test_missing_custom_classmapping(root):
    with pytest.raises(FileNotFoundError, match="my_mapping.csv"):
        BreizhCrops("frh04", root=root, classmapping=root/"my_mapping.csv")


def test_corrupt_classmapping(root):
    (root/"classmapping.csv").write_text(",id,label,code\n1,0,barley,ORH\n")
    with pytest.raises(ValueError, match=r"classmapping\.csv.*classname"): BreizhCrops("frh04", root=root)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_h5(root, fraction):
    p = _paths(root).h5
    data = p.read_bytes()
    p.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(OSError, match=r"frh04\.h5.*corrupt or truncated"):
        ds = BreizhCrops("frh04", root=root)
        for i in range(len(ds)): ds[i]


def test_garbage_h5(root):
    _paths(root).h5.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(OSError, match=r"frh04\.h5.*corrupt or truncated.*download=True"): BreizhCrops("frh04", root=root)


def test_index_key_missing_from_h5(root):
    p = _paths(root)
    index = pd.read_csv(p.index)
    mapped = index["CODE_CULTU"].isin(read_classmapping(root/"classmapping.csv").index)
    row = int(np.flatnonzero(mapped)[2])
    index.loc[row, "path"] = "csv/frh04/123.csv"
    index.to_csv(p.index, index=False)
    ds = BreizhCrops("frh04", root=root)
    ds[0]                                                          # other rows still work
    with pytest.raises(KeyError, match=r"'csv/frh04/123\.csv'.*frh04\.h5"): ds[2]
    assert ds.validate()["path"].tolist() == ["csv/frh04/123.csv"]
    with pytest.raises(KeyError, match=r"csv/frh04/123\.csv"): BreizhCrops("frh04", root=root, preload_ram=True)


def test_nan_in_series(root):
    p = _paths(root)
    ds = BreizhCrops("frh04", root=root)
    key = ds.index["path"].iloc[1]
    def poison(data): data[key][3, COLUMNS["L1C"].index("B8")] = np.nan
    _rewrite_h5(p.h5, poison)
    ds = BreizhCrops("frh04", root=root)
    ds[0]
    with pytest.raises(ValueError, match=rf"'{key}'.*frh04\.h5.*NaN.*\['B8'\]"): ds[1]
    with pytest.raises(ValueError, match="NaN"): BreizhCrops("frh04", root=root, preload_ram=True)


def test_empty_series(root):
    ds = BreizhCrops("frh04", root=root)
    key = ds.index["path"].iloc[0]
    def empty(data): data[key] = data[key][:0]
    _rewrite_h5(_paths(root).h5, empty)
    with pytest.raises(ValueError, match=rf"'{key}'.*is empty"): BreizhCrops("frh04", root=root)[0]


def test_wrong_band_count(root):
    l1c, l2a = _paths(root, level="L1C"), _paths(root, level="L2A")
    shutil.copy(l2a.h5, l1c.h5)                                     # L2A arrays (14 columns) read as L1C (17)
    ds = BreizhCrops("frh04", root=root)
    with pytest.raises(ValueError, match=r"shape \(\d+, 14\), expected \(T, 17\).*level='L2A'"): ds[0]


def test_unknown_codes(root, capsys):
    p = _paths(root)
    index = pd.read_csv(p.index)
    index.loc[:4, "CODE_CULTU"] = "XYZ"
    index.to_csv(p.index, index=False)
    ds = BreizhCrops("frh04", root=root, verbose=True)
    assert "XYZ" in capsys.readouterr().out and "XYZ" not in set(ds.index["CODE_CULTU"])
    index["CODE_CULTU"] = "XYZ"
    index.to_csv(p.index, index=False)
    with pytest.raises(ValueError, match=r"frh04\.csv.*'XYZ'"): BreizhCrops("frh04", root=root)


def test_index_without_required_column(root):
    p = _paths(root)
    pd.read_csv(p.index).drop(columns="sequencelength").to_csv(p.index, index=False)
    with pytest.raises(ValueError, match=r"frh04\.csv.*\['sequencelength'\]"): BreizhCrops("frh04", root=root)


def test_sequencelength_mismatch_reported_by_validate(root):
    p = _paths(root)
    index = pd.read_csv(p.index)
    index["sequencelength"] += 1
    index.to_csv(p.index, index=False)
    problems = BreizhCrops("frh04", root=root).validate()
    assert len(problems) == len(BreizhCrops("frh04", root=root)) and "the index says" in problems["problem"].iloc[0]


def test_missing_shapefile(root):
    pytest.importorskip("geopandas")
    for f in (root/"2017").glob("frh04.*"): f.unlink()
    with pytest.raises(FileNotFoundError, match=r"frh04\.shp"): BreizhCrops("frh04", root=root).geodataframe()


def test_geopandas_missing_message(layout, monkeypatch):
    monkeypatch.setitem(sys.modules, "geopandas", None)
    with pytest.raises(ImportError, match=r"pip install cropkit\[viz\]"): BreizhCrops("frh04", root=layout).geodataframe()


def test_recompile_without_csvs(root):
    shutil.rmtree(_paths(root).csvfolder)
    _paths(root).h5.unlink()
    with pytest.raises(FileNotFoundError, match=r"frh04/csv"): BreizhCrops("frh04", root=root, recompile_h5_from_csv=True)


def test_raw_csv_with_wrong_columns(root):
    p = _paths(root)
    first = sorted(p.csvfolder.glob("*.csv"))[0]
    pd.read_csv(first, index_col=0).drop(columns="QA60").to_csv(first)
    p.h5.unlink()
    with pytest.raises(ValueError, match=rf"{first.name} lacks the column\(s\) \['QA60'\]"):
        BreizhCrops("frh04", root=root, recompile_h5_from_csv=True)


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="'weekly'"): default_transform(sampling="weekly")
    with pytest.raises(KeyError, match="'B13'"): default_transform(bands=["B13"])
    with pytest.raises(ValueError, match="positive integer"): default_transform(sequencelength=0)
