"""Bad-input matrix of the data layer (issue 15): every case builds a small bad input in tmp_path, then checks that
the call raises the expected exception type, that the message names the culprit (file, column, value, parcel or
tile), and that no file that existed before the call was changed or removed (sha256 of every file under tmp_path)."""
import hashlib, shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import pytest

from cropkit.data.breizhcrops import BreizhCrops, compile_h5_from_csv, read_codes, write_h5
from cropkit.data.h2crop import H2Crop, read_sample
from cropkit.data.h2crop_synthetic import make_h2crop
from cropkit.data.packed import PackedSeries, pack_h5
from cropkit.data.synthetic import make_breizhcrops
from cropkit.data.victoria import read_class_map, read_victoria_csv
from cropkit.data.layout import COLUMNS

IDX = "2017/L1C/frh04.csv"
H5 = "2017/L1C/frh04.h5"
TILE = "h5_data/train_00000.h5"


# --- the inputs -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    "Pristine inputs, copied for every case: a BreizhCrops root and an H2Crop root."
    base = tmp_path_factory.mktemp("pristine")
    bc = make_breizhcrops(base/"bc", regions=("frh01", "frh04"), n_parcels=30, raw_csv=True)
    make_breizhcrops(bc, regions="frh04", level="L2A", n_parcels=30)
    h2 = make_h2crop(base/"h2", n_train=2, n_val=1, n_test=1, size=48, seed=0, enmap="synthetic")
    return {"bc": bc, "h2": h2}


def hashes(folder: Path) -> dict[str, str]:
    "sha256 of every file under `folder`, by relative path."
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- small damage helpers (each returns what the culprit check needs, or None) ----------------------------------

def index_edit(root, change, rel=IDX):
    "Rewrite the index at `rel` with `change(DataFrame) -> DataFrame | None` (in place allowed)."
    df = pd.read_csv(root/rel)
    out = change(df)
    (out if out is not None else df).to_csv(root/rel, index=False)

def h5_edit(root, change, rel=H5):
    "Rewrite the BreizhCrops h5 at `rel` with `change(dict key -> array)` applied."
    with h5py.File(root/rel, "r") as f:
        data = {}
        f.visititems(lambda k, o: data.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    change(data)
    write_h5(root/rel, list(data), list(data.values()))

def mapped_key(root, i=0):
    "The h5 key of the `i`-th parcel that BreizhCrops keeps (mapped crop code) in frh04 L1C."
    return BreizhCrops("frh04", root=root, load_timeseries=False).index["path"].iloc[i]

def tile_edit(root, rel=TILE, drop=(), **replace):
    "Rewrite an H2Crop tile: drop datasets or replace their content."
    with h5py.File(root/rel, "r") as f: arrays = {k: f[k][()] for k in f}
    for k in drop: arrays.pop(k)
    arrays.update(replace)
    with h5py.File(root/rel, "w") as f:
        for k, v in arrays.items(): f[k] = v

def tile_array(root, key, rel=TILE):
    with h5py.File(root/rel, "r") as f: return f[key][()]

def set_series(key_index, make):
    "A damage: replace the series of the `key_index`-th kept parcel by `make(series)`."
    def damage(root):
        key = mapped_key(root, key_index)
        h5_edit(root, lambda d: d.__setitem__(key, make(d[key].copy())))
        return key
    return damage

def put(value, at=(0, 0)):
    def make(x): x[at] = value; return x
    return make

def write(rel, text):
    def damage(root):
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        (root/rel).write_bytes(text if isinstance(text, bytes) else text.encode())
    return damage

def victoria_csv(rows: str, header="lc_id,objectid,a,b,c,d"):
    return write("v.csv", header + "\n" + rows)


# --- the cases --------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    layout: str                                      # "bc", "h2" or "none": which input the case starts from
    damage: Callable | None                          # root -> None or a value the culprit may use
    call: Callable                                   # (root, value) -> raises
    exc: type
    culprit: str | Callable                          # text the message must contain (or (root, value) -> text)

def bc(region="frh04", **kw): return lambda root, v: BreizhCrops(region, root=root, **kw)
def item(i=0, **kw): return lambda root, v: BreizhCrops("frh04", root=root, **kw)[i]
KEY = lambda root, v: repr(v)                        # the damaged series' h5 key, quoted as the messages do

CASES = [
    # class mapping and codes
    Case("mapping_missing_root_with_own_data", "bc",
         lambda r: (make_breizhcrops(r, regions="my_farm", n_parcels=5), (r/"classmapping.csv").unlink()),
         bc(), FileNotFoundError, "2017/L1C/my_farm.csv"),
    Case("mapping_missing_column", "bc", write("classmapping.csv", ",id,label,code\n1,0,barley,ORH\n"), bc(), ValueError, "classmapping.csv"),
    Case("mapping_code_twice", "bc", write("classmapping.csv", ",id,classname,code\n1,0,barley,ORH\n2,1,wheat,ORH\n"), bc(), ValueError, "'ORH'"),
    Case("mapping_id_gap", "bc", write("classmapping.csv", ",id,classname,code\n1,0,barley,ORH\n2,2,wheat,BTH\n"), bc(), ValueError, "[0, 2]"),
    Case("mapping_given_but_absent", "bc", None, bc(classmapping="mine.csv"), FileNotFoundError, "mine.csv"),
    Case("codes_wrong_columns", "bc", write("codes.csv", "a,b\n1,2\n"), lambda r, v: read_codes(r/"codes.csv"), ValueError, "codes.csv"),
    # the index
    Case("index_missing", "bc", lambda r: (r/IDX).unlink(), bc(), FileNotFoundError, "frh04.csv"),
    Case("index_lacks_column", "bc", lambda r: index_edit(r, lambda d: d.drop(columns="sequencelength")), bc(), ValueError, "['sequencelength']"),
    Case("index_non_numeric_id", "bc", lambda r: index_edit(r, lambda d: d.assign(id=d["id"].astype(str).where(d.index != 4, "F-12"))),
         bc(), ValueError, "row 5, column 'id': value 'F-12'"),
    Case("index_empty_file", "bc", write(IDX, ""), bc(), ValueError, "frh04.csv is empty"),
    Case("index_header_only", "bc", lambda r: index_edit(r, lambda d: d.iloc[:0]), bc(), ValueError, "header but no rows"),
    Case("index_cut_mid_line", "bc", lambda r: (r/IDX).write_bytes((r/IDX).read_bytes()[:900]), bc(), ValueError, "was cut off"),
    Case("index_missing_value", "bc", lambda r: index_edit(r, lambda d: d.assign(path=d["path"].where(d.index != 2, None))),
         bc(), ValueError, "row 3: no value in column(s) ['path']"),
    Case("index_repeated_parcel", "bc", lambda r: index_edit(r, lambda d: pd.concat([d, d.iloc[[7]]])), bc(), ValueError,
         lambda r, v: f"column 'id', e.g. {pd.read_csv(r/IDX)['id'].iloc[7]} on rows 8, 31"),
    Case("index_repeated_path", "bc", lambda r: index_edit(r, lambda d: d.assign(path=d["path"].where(d.index != 3, d["path"].iloc[2]))),
         bc(), ValueError, "column 'path'"),
    Case("index_sequencelength_text", "bc", lambda r: index_edit(r, lambda d: d.assign(sequencelength=d["sequencelength"].astype(str).where(d.index != 0, "abc"))),
         bc(), ValueError, "column 'sequencelength': value 'abc'"),
    Case("index_sequencelength_negative", "bc", lambda r: index_edit(r, lambda d: d.assign(sequencelength=d["sequencelength"].where(d.index != 1, -5))),
         bc(), ValueError, "value -5 is not a non-negative integer"),
    Case("index_codes_lower_case", "bc", lambda r: index_edit(r, lambda d: d.assign(CODE_CULTU=d["CODE_CULTU"].str.lower())),
         bc(), ValueError, "did you mean"),
    Case("index_path_names_group", "bc", lambda r: index_edit(r, lambda d: d.assign(path=d["path"].where(d["path"] != mapped_key(r), "csv/frh04"))),
         item(0), ValueError, "'csv/frh04' names an h5 group"),
    Case("index_path_not_in_h5", "bc", lambda r: index_edit(r, lambda d: d.assign(path=d["path"].where(d["path"] != mapped_key(r), "csv/frh04/123.csv"))),
         item(0), KeyError, "csv/frh04/123.csv"),
    # the h5 database
    Case("h5_truncated", "bc", lambda r: (r/H5).write_bytes((r/H5).read_bytes()[:3000]), bc(), OSError, "frh04.h5"),
    Case("h5_not_hdf5", "bc", write(H5, b"not an HDF5 file" * 50), bc(), OSError, "frh04.h5"),
    Case("h5_infinite_value", "bc", set_series(2, put(np.inf, (5, 3))), item(2), ValueError, KEY),
    Case("h5_finite_garbage", "bc", set_series(1, put(1e30)), item(1), ValueError, "plausible range -1000..65535"),
    Case("h5_finite_garbage_preload", "bc", set_series(1, put(-1e30)), bc(preload_ram=True), ValueError, KEY),
    Case("h5_negative_date", "bc", set_series(0, put(-1.0, (2, -1))), item(0), ValueError, "'doa' outside 1980..2100"),
    Case("h5_already_scaled", "bc", set_series(3, lambda x: np.concatenate([x[:, :-1] * 1e-4, x[:, -1:]], 1)), item(3), ValueError, "looks already scaled"),
    Case("h5_fewer_steps_than_index", "bc", set_series(0, lambda x: x[:1]), item(0), ValueError, "has only 1 acquisition(s)"),
    Case("h5_fewer_steps_packed", "bc", set_series(4, lambda x: x[:2]), lambda r, v: BreizhCrops("frh04", root=r).to_packed(), ValueError, KEY),
    Case("h5_other_level", "bc", lambda r: shutil.copy(r/"2017/L2A/frh04.h5", r/H5), item(0), ValueError, "level='L2A'"),
    Case("h5_non_numeric", "bc", set_series(0, lambda x: np.array([b"x"] * 3)), item(0), ValueError, KEY),
    # arguments
    Case("unknown_level", "bc", None, bc(level="L3A"), ValueError, "'L3A'"),
    Case("unknown_year", "bc", None, bc(year=2016), ValueError, "2016"),
    Case("negative_filter_length", "bc", None, bc(filter_length=-1), ValueError, "filter_length"),
    Case("raw_csv_lacks_column", "bc",
         lambda r: (lambda f: (pd.read_csv(f, index_col=0).drop(columns="QA60").to_csv(f), f.name)[1])(sorted((r/"2017/L1C/frh04/csv").glob("*.csv"))[0]),
         lambda r, v: compile_h5_from_csv(r, "frh04"), ValueError, lambda r, v: f"{v} lacks the column(s) ['QA60']"),
    # packed caches
    Case("packed_cache_absent", "bc", None, lambda r, v: PackedSeries.load(r/H5), FileNotFoundError, "frh04.packed"),
    Case("packed_key_is_group", "bc", None, lambda r, v: pack_h5(r/H5, ["csv/frh04"], COLUMNS["L1C"]), ValueError, "'csv/frh04' in"),
    Case("packed_key_missing", "bc", None, lambda r, v: pack_h5(r/H5, ["csv/frh04/1.csv"], COLUMNS["L1C"]), KeyError, "'csv/frh04/1.csv'"),
    Case("packed_cache_damaged", "bc",
         lambda r: (PackedSeries.from_h5(r/H5, columns=COLUMNS["L1C"]), (r/"2017/L1C/frh04.packed.npy").write_bytes(b"\x00" * 64)),
         lambda r, v: PackedSeries.load(r/H5), ValueError, "frh04.packed"),
    # Victoria CSVs (tiny: 2 dates x 2 bands)
    Case("victoria_non_numeric", "none", victoria_csv("1,10,5,6,7,8\n2,11,5,x,7,8\n"),
         lambda r, v: read_victoria_csv(r/"v.csv", n_dates=2, n_bands=2), ValueError, "column 'b'"),
    Case("victoria_unknown_class", "none", victoria_csv("1,10,5,6,7,8\n9,11,5,6,7,8\n"),
         lambda r, v: read_victoria_csv(r/"v.csv", n_dates=2, n_bands=2), ValueError, "unknown lc_id value 9"),
    Case("victoria_missing_value", "none", victoria_csv("1,10,5,6,7,8\n2,11,5,,7,8\n"),
         lambda r, v: read_victoria_csv(r/"v.csv", n_dates=2, n_bands=2), ValueError, "row 2 (after the header), column 'b'"),
    Case("victoria_column_count", "none", victoria_csv("1,10,5,6,7\n", header="lc_id,objectid,a,b,c"),
         lambda r, v: read_victoria_csv(r/"v.csv", n_dates=2, n_bands=2), ValueError, "expected 6 columns"),
    Case("victoria_class_map_header", "none", write("class_map.txt", "code,name\n0,wheat\n"),
         lambda r, v: read_class_map(r/"class_map.txt"), ValueError, "'code,name'"),
    Case("victoria_class_map_colour", "none", write("class_map.txt", "value,class,colour\n0,wheat,rgb(300, 0, 0)\n"),
         lambda r, v: read_class_map(r/"class_map.txt"), ValueError, "line 2"),
    # H2Crop tiles and lists
    Case("h2_missing_s2", "h2", lambda r: tile_edit(r, drop=("S2_data",)), lambda r, v: H2Crop(r, "train")[0], KeyError, "train_00000.h5"),
    Case("h2_wrong_enmap_shape", "h2", lambda r: tile_edit(r, EnMAP_data=np.zeros((218, 15, 15), np.int16)),
         lambda r, v: H2Crop(r, "train")[0], ValueError, "'EnMAP_data' has shape (218, 15, 15), expected (218, 16, 16)"),
    Case("h2_nan_s2", "h2", lambda r: tile_edit(r, S2_data=np.where(np.arange(48) == 3, np.nan, tile_array(r, "S2_data")).astype(np.float32)),
         lambda r, v: H2Crop(r, "train")[0], ValueError, "'S2_data' holds"),
    Case("h2_garbage_enmap", "h2", lambda r: tile_edit(r, EnMAP_data=np.full((218, 16, 16), 1e30, np.float32)),
         lambda r, v: H2Crop(r, "train")[0], ValueError, "'EnMAP_data' holds 55808 value(s) outside the plausible range"),
    Case("h2_label_outside_taxonomy", "h2", lambda r: tile_edit(r, label=np.where(np.arange(48) == 0, 140, tile_array(r, "label")).astype(np.uint8)),
         lambda r, v: H2Crop(r, "train")[0], ValueError, "id 140"),
    Case("h2_label_float", "h2", lambda r: tile_edit(r, label=tile_array(r, "label").astype(np.float32)),
         lambda r, v: H2Crop(r, "train")[0], TypeError, "train_00000.h5"),
    Case("h2_tile_not_hdf5", "h2", write(TILE, b"garbage"), lambda r, v: H2Crop(r, "train")[0], OSError, "train_00000.h5"),
    Case("h2_split_list_missing", "h2", lambda r: (r/"data_lists/val.txt").unlink(), lambda r, v: H2Crop(r, "val"), FileNotFoundError, "val.txt"),
    Case("h2_split_list_repeats", "h2", write("data_lists/train.txt", "train_00000\ntrain_00001\ntrain_00000.h5\n"),
         lambda r, v: H2Crop(r, "train"), ValueError, "'train_00000' twice (lines 1 and 3)"),
    Case("h2_listed_tile_missing", "h2", lambda r: (r/"h5_data/train_00001.h5").unlink(), lambda r, v: H2Crop(r, "train"), FileNotFoundError, "train_00001.h5"),
    # generators
    Case("make_breizhcrops_existing_region", "bc", None, lambda r, v: make_breizhcrops(r, regions=("frh02", "frh04"), n_parcels=5),
         FileExistsError, "region 'frh04'"),
    Case("make_breizhcrops_existing_raw_csvs", "bc", lambda r: (r/IDX).unlink() or (r/H5).unlink(),
         lambda r, v: make_breizhcrops(r, regions="frh04", n_parcels=5, raw_csv=True), FileExistsError, "frh04/csv"),
    Case("make_breizhcrops_bad_lengths", "none", None, lambda r, v: make_breizhcrops(r, max_length=400), ValueError, "max_length (400)"),
    Case("make_h2crop_existing_root", "h2", None, lambda r, v: make_h2crop(r, n_train=1, n_val=0, n_test=0, size=48), FileExistsError, "synthetic.json"),
    Case("make_h2crop_existing_list_only", "none", write("data_lists/train.txt", "my_tile\n"),
         lambda r, v: make_h2crop(r, n_train=1, n_val=0, n_test=0, size=48), FileExistsError, "train.txt"),
    Case("make_h2crop_bad_size", "none", None, lambda r, v: make_h2crop(r, size=50), ValueError, "multiple of 3"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, layouts, tmp_path):
    root = tmp_path/"root"
    if case.layout == "none": root.mkdir()
    else: shutil.copytree(layouts[case.layout], root)
    value = case.damage(root) if case.damage is not None else None
    before = hashes(tmp_path)
    with pytest.raises(case.exc) as err:
        case.call(root, value)
    culprit = case.culprit(root, value) if callable(case.culprit) else case.culprit
    assert culprit in str(err.value), f"the message does not name {culprit!r}: {err.value}"
    after = hashes(tmp_path)
    changed = sorted(k for k, h in before.items() if after.get(k) != h)
    assert not changed, f"existing files changed or removed: {changed}"


def test_the_matrix_is_large_and_covers_every_area():
    assert len(CASES) >= 30
    names = " ".join(c.name for c in CASES)
    for area in ("mapping", "codes", "index", "h5_", "packed", "victoria", "h2_", "make_"):
        assert area in names, area
