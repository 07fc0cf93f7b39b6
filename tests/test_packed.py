"Packed loader: equivalence with the h5 file, cache invalidation and damage, sampling invariants, loaders."
import json, os, warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cropkit.data.breizhcrops import COLUMNS, DEFAULT_BANDS
from cropkit.data.packed import (PackedParcels, PackedSeries, cache_paths, collate_packed, list_h5_series,
                                 sample_time_indices)
from cropkit.data.synthetic import make_breizhcrops


def _region(root, level="L1C", n=40, seed=0):
    make_breizhcrops(root, regions=("frh01",), level=level, n_parcels=n, seed=seed)
    return root / "2017" / level / "frh01.h5", pd.read_csv(root / "2017" / level / "frh01.csv")


def _write_h5(path, series: dict):
    with h5py.File(path, "w") as f:
        for k, x in series.items(): f.create_dataset(k, data=x)


def _toy(n=8, width=3, lo=1, hi=60, seed=0):
    rng = np.random.default_rng(seed)
    return {f"csv/r/{i}.csv": rng.random((int(rng.integers(lo, hi)), width)) * 1e4 for i in range(n)}


COLS3 = ["B4", "B8", "B11"]


def _no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_packed_equals_h5_for_every_key(tmp_path, level):
    h5_path, index = _region(tmp_path, level)
    keys = index["path"].tolist()
    cols = COLUMNS[level]
    packed = PackedSeries.from_h5(h5_path, keys, cols)
    cached = _no_warning(lambda: PackedSeries.from_h5(h5_path, keys, cols))      # second time: from the cache
    value_cols = [i for i, c in enumerate(cols) if c != "doa"]
    with h5py.File(h5_path, "r") as f:
        for p in (packed, cached):
            assert p.keys.tolist() == keys and p.columns == [cols[i] for i in value_cols]
            for i, k in enumerate(keys):
                x = f[k][()]
                np.testing.assert_array_equal(p.series(i), x[:, value_cols].astype(np.float32))
                np.testing.assert_array_equal(p.series_dates(i).astype(np.int64), x[:, cols.index("doa")].astype(np.int64))
    assert packed.lengths.tolist() == index["sequencelength"].tolist()


def test_all_keys_and_subsets(tmp_path):
    h5_path, index = _region(tmp_path)
    assert sorted(list_h5_series(h5_path)) == sorted(index["path"])
    full = PackedSeries.from_h5(h5_path, None, COLUMNS["L1C"])
    assert len(full) == len(index)
    few = index["path"].tolist()[::-7]
    sub = _no_warning(lambda: PackedSeries.from_h5(h5_path, few, COLUMNS["L1C"]))   # a subset reuses the cache
    for i, k in enumerate(few):
        np.testing.assert_array_equal(sub.series(i), full.series(full.position([k])[0]))


def test_cache_rebuilt_when_h5_changes(tmp_path):
    h5_path = tmp_path / "r.h5"
    _write_h5(h5_path, _toy(seed=0))
    first = PackedSeries.from_h5(h5_path, None, COLS3)
    new = _toy(seed=1)
    _write_h5(h5_path, new)
    st = h5_path.stat()
    os.utime(h5_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))         # a clearly later mtime
    with pytest.warns(UserWarning, match="another version"):
        again = PackedSeries.from_h5(h5_path, None, COLS3)
    for i, k in enumerate(again.keys):
        np.testing.assert_array_equal(again.series(i), new[k].astype(np.float32))
    assert not all(np.array_equal(a, b) for a, b in zip((first.series(i) for i in range(8)), (again.series(i) for i in range(8))))
    _no_warning(lambda: PackedSeries.from_h5(h5_path, None, COLS3))          # and the new cache is valid


def _damage_keeping_stamp(path):
    "Overwrite `path` with garbage of the same size and restore its mtime: only reading it can tell."
    st = path.stat()
    path.write_bytes(b"\x00" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("damage", ["truncate_values", "garbage_values", "garbage_index", "bad_json", "no_json",
                                    "no_index", "other_columns_json"])
def test_corrupt_or_stale_cache_is_rebuilt(tmp_path, damage):
    h5_path = tmp_path / "r.h5"
    truth = _toy()
    _write_h5(h5_path, truth)
    PackedSeries.from_h5(h5_path, None, COLS3)
    paths = cache_paths(h5_path)
    if damage == "truncate_values": paths["values"].write_bytes(paths["values"].read_bytes()[:-40])
    if damage == "garbage_values": _damage_keeping_stamp(paths["values"])
    if damage == "garbage_index": _damage_keeping_stamp(paths["index"])
    if damage == "bad_json": paths["meta"].write_text("{")
    if damage == "no_json": paths["meta"].unlink()                         # an interrupted build
    if damage == "no_index": paths["index"].unlink()
    if damage == "other_columns_json":
        meta = json.loads(paths["meta"].read_text()); meta["n_obs"] += 1; paths["meta"].write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = PackedSeries.from_h5(h5_path, None, COLS3)
    assert (len(caught) == 0) == (damage == "no_json"), [str(w.message) for w in caught]
    for i, k in enumerate(packed.keys):
        np.testing.assert_array_equal(packed.series(i), truth[k].astype(np.float32))
    _no_warning(lambda: PackedSeries.load(h5_path))                        # the rebuilt cache is valid


def test_load_reports_why(tmp_path):
    h5_path = tmp_path / "r.h5"
    _write_h5(h5_path, _toy())
    with pytest.raises(FileNotFoundError, match="packed cache record not found"):
        PackedSeries.load(h5_path)
    PackedSeries.from_h5(h5_path, None, COLS3)
    _damage_keeping_stamp(cache_paths(h5_path)["values"])
    with pytest.raises(ValueError, match="damaged|does not match"):
        PackedSeries.load(h5_path)


def test_rebuild_for_other_columns_or_unknown_keys(tmp_path):
    h5_path = tmp_path / "r.h5"
    _write_h5(h5_path, _toy())
    PackedSeries.from_h5(h5_path, ["csv/r/0.csv", "csv/r/1.csv"], COLS3)
    with pytest.warns(UserWarning, match="key 'csv/r/5.csv' is not in this PackedSeries"):
        p = PackedSeries.from_h5(h5_path, ["csv/r/5.csv"], COLS3)
    assert p.keys.tolist() == ["csv/r/5.csv"]
    with pytest.warns(UserWarning, match="the cache holds the columns"):
        p = PackedSeries.from_h5(h5_path, None, ["B2", "B3", "B4"])
    assert p.columns == ["B2", "B3", "B4"]


def test_unwritable_cache_dir_warns_and_still_loads(tmp_path):
    h5_path = tmp_path / "r.h5"
    _write_h5(h5_path, _toy())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not write the packed cache"):
        p = PackedSeries.from_h5(h5_path, None, COLS3, cache_dir=blocker / "cache")
    assert len(p) == 8
    p = PackedSeries.from_h5(h5_path, None, COLS3, cache=False)
    assert not cache_paths(h5_path)["meta"].exists()


def test_bad_h5_content(tmp_path):
    h5_path = tmp_path / "r.h5"
    series = _toy()
    series["csv/r/3.csv"][2, 1] = np.nan
    _write_h5(h5_path, series)
    with pytest.raises(ValueError, match="series 'csv/r/3.csv' in .*r.h5 contains NaN"):
        PackedSeries.from_h5(h5_path, None, COLS3)
    assert len(PackedSeries.from_h5(h5_path, None, COLS3, allow_nan=True, cache=False)) == 8
    _write_h5(h5_path, {"a": np.zeros((5, 3)), "b": np.zeros((5, 4))})
    with pytest.raises(ValueError, match="series 'b' .* has shape \\(5, 4\\); expected \\(T, 3\\)"):
        PackedSeries.from_h5(h5_path, None, COLS3)
    with pytest.raises(KeyError, match="series 'c' is not a dataset"):
        PackedSeries.from_h5(h5_path, ["a", "c"], COLS3)


def test_memory_mapped(tmp_path):
    h5_path, index = _region(tmp_path, n=20)
    p = PackedSeries.from_h5(h5_path, index["path"], COLUMNS["L1C"], mmap=True)   # built, then mapped
    assert isinstance(p.values, np.memmap)
    q = PackedSeries.from_h5(h5_path, index["path"], COLUMNS["L1C"], mmap=True)   # from the cache
    assert isinstance(q.values, np.memmap)
    np.testing.assert_array_equal(p.sample_batch(np.arange(20), generator=3), q.sample_batch(np.arange(20), generator=3))


@pytest.mark.parametrize("mode", ["random", "even"])
def test_sampling_invariants(mode):
    lengths = np.arange(1, 201)
    for seed in range(5):
        idx = sample_time_indices(lengths, 45, generator=seed, mode=mode)
        assert idx.shape == (200, 45) and idx.dtype == np.int64
        assert (np.diff(idx, axis=1) >= 0).all()                            # sorted
        assert ((idx >= 0) & (idx < lengths[:, None])).all()
        n_unique = np.array([len(np.unique(r)) for r in idx])
        assert (n_unique[lengths >= 45] == 45).all()                         # no repeats when T >= 45
        assert (n_unique[lengths < 45] <= lengths[lengths < 45]).all()      # repeats only when T < 45
        if mode == "even": break


def test_random_sampling_without_replacement_is_uniform():
    idx = sample_time_indices(np.full(20_000, 60), 45, generator=0)
    freq = np.bincount(idx.ravel(), minlength=60) / 20_000
    assert np.abs(freq - 45 / 60).max() < 0.02
    short = sample_time_indices(np.full(20_000, 9), 45, generator=0)        # with replacement: uniform too
    assert np.abs(np.bincount(short.ravel(), minlength=9) / short.size - 1 / 9).max() < 0.01


def test_batch_equals_per_sample_selection(tmp_path):
    h5_path, index = _region(tmp_path)
    packed = PackedSeries.from_h5(h5_path, index["path"], COLUMNS["L1C"])
    bands = DEFAULT_BANDS["L1C"]
    batch_idx = np.array([5, 0, 5, 39, 12])
    t = sample_time_indices(packed.lengths[batch_idx], 45, generator=7)
    X = packed.sample_batch(batch_idx, 45, generator=7, bands=bands)
    cols = [COLUMNS["L1C"].index(b) for b in bands]
    with h5py.File(h5_path, "r") as f:
        for row, (i, ti) in enumerate(zip(batch_idx, t)):
            ref = (f[index["path"][i]][()][ti][:, cols] * 1e-4).astype(np.float32)
            np.testing.assert_allclose(X[row], ref, rtol=1e-6)


def test_dataset_and_loaders(tmp_path):
    h5_path, index = _region(tmp_path, n=50)
    index = index[index["classid"].notna()]
    packed = PackedSeries.from_h5(h5_path, index["path"], COLUMNS["L1C"])
    ds = PackedParcels(packed, index["classid"].astype(int), index["id"], bands=DEFAULT_BANDS["L1C"])
    seen = []
    for X, y, ids in ds.loader(batch_size=16, shuffle=True):
        assert X.shape[1:] == (45, 13) and X.dtype == torch.float32 and y.dtype == ids.dtype == torch.int64
        seen += ids.tolist()
    assert sorted(seen) == sorted(index["id"].tolist())
    X, y, ids = collate_packed([ds[0], ds[1]])                              # per-sample items collate as usual
    assert X.shape == (2, 45, 13) and ids.tolist() == index["id"].tolist()[:2]
    workers = torch.utils.data.DataLoader(ds, batch_size=10, collate_fn=collate_packed, num_workers=2)
    assert sum(len(b[1]) for b in workers) == len(ds)


def test_parcels_bad_arguments(tmp_path):
    h5_path = tmp_path / "r.h5"
    _write_h5(h5_path, _toy())
    p = PackedSeries.from_h5(h5_path, None, COLS3)
    with pytest.raises(ValueError, match="one entry per series"):
        PackedParcels(p, np.zeros(7, int), np.arange(8))
    with pytest.raises(ValueError, match="non-negative integer"):
        PackedParcels(p, np.full(8, -1), np.arange(8))
    with pytest.raises(KeyError, match="band 'B2' is not a packed column"):
        PackedParcels(p, np.zeros(8, int), np.arange(8), bands=["B2"])
    with pytest.raises(ValueError, match="unknown sampling 'first'"):
        PackedParcels(p, np.zeros(8, int), np.arange(8), sampling="first")
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        PackedParcels(p, np.zeros(8, int), np.arange(8), sequencelength=0)
    _write_h5(tmp_path / "e.h5", {"a": np.zeros((0, 3)), "b": np.ones((4, 3))})
    e = PackedSeries.from_h5(tmp_path / "e.h5", None, COLS3)
    with pytest.raises(ValueError, match="series 'a' has no observations"):
        e.sample_batch([1, 0])
