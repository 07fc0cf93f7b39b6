"Integration and bad-input tests for the H2Crop reader (cropkit.data.h2crop) and generator (cropkit.data.h2crop_synthetic)."
import io
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import torch

from cropkit.core import data_path
from cropkit.data.h2crop import (H5_KEYS, LEVELS, CutMix, H2Crop, Normalize, RandomFlipRotate, Taxonomy, collate_h2crop,
                                 default_taxonomy, flip_rotate, load_normalization, read_sample, read_split)
from cropkit.data.h2crop_synthetic import make_h2crop

SIZE = 96


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_h2crop(tmp_path_factory.mktemp("h2crop") / "root", n_train=3, n_val=1, n_test=1, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def tax():
    return default_taxonomy()


def copy_root(root, dst):
    "A private copy of the generated root that a test may damage."
    return shutil.copytree(root, dst)


def rewrite(path, drop=(), rename=None, **replace):
    "Rewrite an h5 tile: drop datasets, rename them, or replace their content."
    with h5py.File(path, "r") as f: arrays = {k: f[k][()] for k in f}
    for k in drop: arrays.pop(k)
    arrays.update(replace)
    if rename: arrays = {rename.get(k, k): v for k, v in arrays.items()}
    with h5py.File(path, "w") as f:
        for k, v in arrays.items(): f[k] = v


# ---------------------------------------------------------------- key namings, windows, levels

def test_both_key_namings_give_the_same_items(root, tmp_path):
    other = make_h2crop(tmp_path / "readme", n_train=3, n_val=0, n_test=0, size=SIZE, seed=0, key_style="readme")
    with h5py.File(other / "h5_data" / "train_00000.h5") as f: assert sorted(f) == ["EnMAP", "S2", "label", "prior"]
    a, b = H2Crop(root, "train")[1], H2Crop(other, "train")[1]
    for k in ("S2", "EnMAP", "priors", "label"): assert torch.equal(a[k], b[k]), k


def test_mixed_key_namings_are_accepted(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    rewrite(r / "h5_data" / "train_00000.h5", rename={"priors": "prior", "EnMAP_data": "EnMAP"})
    assert H2Crop(r, "train")[0]["priors"].shape == (4, SIZE, SIZE)


@pytest.mark.parametrize("window,months", [("jun", 6), ("aug", 8), ("oct", 10), ("dec", 12), ("Jun", 6), ("DEC", 12)])
def test_windows_select_the_first_months(root, window, months):
    full = H2Crop(root, "val", window="dec", normalize=False)[0]["S2"]
    item = H2Crop(root, "val", window=window, normalize=False)[0]
    assert item["S2"].shape == (months, 10, SIZE, SIZE)
    assert torch.equal(item["S2"], full[:months])


@pytest.mark.parametrize("levels", [(1,), (4,), (3, 1), (1, 2, 3, 4), (4, 3, 2, 1)])
def test_levels_select_and_order_label_channels_priors_keep_all_levels(root, tax, levels):
    full = H2Crop(root, "train")[0]
    item = H2Crop(root, "train", levels=levels)[0]
    ds = H2Crop(root, "train", levels=levels)
    assert ds.num_classes == tuple(tax.num_classes(l) for l in levels)
    assert item["label"].shape == (len(levels), SIZE, SIZE)
    for i, l in enumerate(levels):
        assert torch.equal(item["label"][i], full["label"][l - 1])
    assert torch.equal(item["priors"], full["priors"])  # priors always hold levels 1-4, channel l-1 = level l


def test_items_have_documented_keys_dtypes_and_shapes(root):
    item = H2Crop(root, "train")[0]
    assert list(item) == ["S2", "EnMAP", "priors", "label", "name"]
    assert item["S2"].dtype == item["EnMAP"].dtype == torch.float32
    assert item["label"].dtype == item["priors"].dtype == torch.int64
    assert item["EnMAP"].shape == (218, SIZE // 3, SIZE // 3)
    assert item["name"] == "train_00000"
    bare = H2Crop(root, "train", with_enmap=False, with_priors=False)[0]
    assert list(bare) == ["S2", "label", "name"]


def test_normalisation_uses_the_published_statistics(root):
    raw = H2Crop(root, "train", normalize=False)[0]
    norm = H2Crop(root, "train")[0]
    stats = load_normalization()
    for key in ("S2", "EnMAP"):
        mean, std = stats[key]
        expected = (raw[key] - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
        assert (norm[key] - expected).abs().max() < 1e-4, key
    assert torch.equal(norm["label"], raw["label"])


def test_list_names_with_h5_suffix_and_legacy_list_folder(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    (r / "data_lists").rename(r / "data_list")
    (r / "data_list" / "train.txt").write_text("train_00000.h5\n\ntrain_00001\n")
    assert read_split(r, "train") == ["train_00000", "train_00001"]
    assert len(H2Crop(r, "train")) == 2


# ---------------------------------------------------------------- transforms

def pixel_keys(item):
    "A hashable key per S2 pixel (its whole time series), identifying pixels after any permutation."
    s2 = item["S2"].reshape(-1, *item["S2"].shape[-2:])
    return [[tuple(s2[:, r, c].tolist()) for c in range(s2.shape[-1])] for r in range(s2.shape[-2])]


@pytest.mark.parametrize("vflip,hflip,k", [(False, False, 1), (True, False, 0), (False, True, 3), (True, True, 2), (True, False, 1)])
def test_flip_rotate_keeps_every_raster_aligned(root, vflip, hflip, k):
    item = H2Crop(root, "train", window="jun", normalize=False)[0]
    item["S2"] = item["S2"][:2, :2, :30, :30]  # a corner keeps the pixel bookkeeping cheap
    item["EnMAP"], item["label"], item["priors"] = item["EnMAP"][:, :10, :10], item["label"][:, :30, :30], item["priors"][:, :30, :30]
    out = flip_rotate(item, vflip, hflip, k)
    before, after = pixel_keys(item), pixel_keys(out)
    where = {before[r][c]: (r, c) for r in range(30) for c in range(30)}
    assert len(where) == 900  # noisy pixels are unique
    for r in range(30):
        for c in range(30):
            r0, c0 = where[after[r][c]]
            assert torch.equal(out["label"][:, r, c], item["label"][:, r0, c0])
            assert torch.equal(out["priors"][:, r, c], item["priors"][:, r0, c0])
            # the EnMAP pixel over (r, c) is the EnMAP pixel that was over (r0, c0)
            assert torch.equal(out["EnMAP"][:, r // 3, c // 3], item["EnMAP"][:, r0 // 3, c0 // 3])


def test_random_flip_rotate_in_the_dataset_is_seeded_and_consistent(root, tax):
    a = H2Crop(root, "train", transform=RandomFlipRotate(generator=3))
    b = H2Crop(root, "train", transform=RandomFlipRotate(generator=3))
    plain = H2Crop(root, "train")
    items_a, items_b = [a[i] for i in range(3)], [b[i] for i in range(3)]
    for x, y in zip(items_a, items_b):
        for k in ("S2", "EnMAP", "label", "priors"): assert torch.equal(x[k], y[k])
    changed = 0
    for i, x in enumerate(items_a):
        tax.check(x["label"]); tax.check(x["priors"])
        ref = plain[i]
        probe = {"S2": ref["S2"][0, :2]}  # find the symmetry on a small slice, then check every raster
        matches = [(v, h, k) for v in (False, True) for h in (False, True) for k in range(4)
                   if torch.equal(flip_rotate(probe, v, h, k)["S2"], x["S2"][0, :2])]
        assert matches, "the transformed S2 is not a symmetry of the original"
        v, h, k = matches[0]
        sym = flip_rotate(ref, v, h, k)
        for key in ("EnMAP", "label", "priors"): assert torch.equal(sym[key], x[key]), key
        changed += (v, h, k % 4) != (False, False, 0)
    assert changed > 0


def test_seeded_transforms_give_each_dataloader_worker_its_own_stream(monkeypatch):
    class Info:
        def __init__(self, id): self.id = id
    t = RandomFlipRotate(generator=0)
    draws = {}
    for worker in (0, 1, 0):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda w=worker: Info(w))
        t2 = RandomFlipRotate(generator=0)
        draws.setdefault(worker, []).append([t2.sample() for _ in range(12)])
    assert draws[0][0] == draws[0][1]          # reproducible per worker
    assert draws[0][0] != draws[1][0]          # but workers differ


def test_cutmix_pastes_boxes_scaled_to_the_enmap_grid(root, tax):
    batch = collate_h2crop([H2Crop(root, "train")[i] for i in range(3)])
    cm = CutMix(p=1.0, min_ratio=0.5, max_ratio=0.9, generator=1)
    H, W, scale = cm.grid(batch)
    assert (H, W, scale) == (SIZE, SIZE, 3)
    boxes = cm.boxes(3, H, W, scale)
    out = cm.apply(batch, boxes, scale)
    assert len(boxes) == 3
    for t, s, top, left, h, w in boxes:
        assert t != s and h == w and 0.5 * SIZE - 3 < h <= 0.9 * SIZE
        assert top % 3 == left % 3 == h % 3 == 0
        box = (..., slice(top, top + h), slice(left, left + w))
        ebox = (..., slice(top // 3, (top + h) // 3), slice(left // 3, (left + w) // 3))
        for key in ("S2", "label", "priors"):
            assert torch.equal(out[key][t][box], batch[key][s][box]), key
            rest = torch.ones(H, W, dtype=torch.bool); rest[top:top + h, left:left + w] = False
            assert torch.equal(out[key][t][..., rest], batch[key][t][..., rest]), key
        assert torch.equal(out["EnMAP"][t][ebox], batch["EnMAP"][s][ebox])
        erest = torch.ones(H // 3, W // 3, dtype=torch.bool); erest[ebox[1:]] = False
        assert torch.equal(out["EnMAP"][t][:, erest], batch["EnMAP"][t][:, erest])
    tax.check(out["label"], axis=1); tax.check(out["priors"], axis=1)


def test_cutmix_without_enmap_uses_the_pixel_grid():
    cm = CutMix(p=1.0, generator=0)
    batch = {"S2": torch.randn(4, 2, 10, 20, 20), "label": torch.zeros(4, 4, 20, 20, dtype=torch.long)}
    assert cm.grid(batch) == (20, 20, 1)
    boxes = cm.boxes(4, 20, 20, 1)
    assert any(b[2] % 3 or b[3] % 3 or b[4] % 3 for b in cm.boxes(64, 20, 20, 1))  # not restricted to 3-px steps
    out = cm(batch)
    assert out["S2"].shape == batch["S2"].shape and len(boxes) == 4


def test_dataloader_with_collate(root):
    loader = torch.utils.data.DataLoader(H2Crop(root, "train", window="aug"), batch_size=2, collate_fn=collate_h2crop)
    batches = list(loader)
    assert [b["S2"].shape for b in batches] == [(2, 8, 10, SIZE, SIZE), (1, 8, 10, SIZE, SIZE)]
    assert batches[0]["name"] == ["train_00000", "train_00001"]


# ---------------------------------------------------------------- taxonomy on real files

def test_real_eurocrops_parcels_map_to_the_taxonomy(tax):
    shapefile = pytest.importorskip("shapefile")
    z = zipfile.ZipFile(data_path("eurocrops_si", "SI_2021.zip"))
    base = next(n[:-4] for n in z.namelist() if n.endswith(".shp"))
    reader = shapefile.Reader(shp=io.BytesIO(z.read(base + ".shp")), shx=io.BytesIO(z.read(base + ".shx")),
                              dbf=io.BytesIO(z.read(base + ".dbf")))
    codes = [r["EC_hcat_c"] for r in reader.records()]
    ids = tax.hcat_to_ids(codes, strict=False)
    assert len(codes) == 100 and int((ids[:, 3] > 0).sum()) == 99
    assert tax.inconsistencies(ids, axis=1).empty
    with pytest.raises(KeyError, match="not in the H2Crop taxonomy"): tax.hcat_to_ids(codes)


def test_bad_taxonomy_csv(tmp_path):
    bad = tmp_path / "cascade_labels.csv"
    bad.write_text("HCAT3_code,level1_id\n1,1\n")
    with pytest.raises(ValueError, match="lacks columns"): Taxonomy.from_csv(bad)


# ---------------------------------------------------------------- bad input

TILE = "train_00000.h5"


@pytest.mark.parametrize("kind", ["S2", "EnMAP", "label", "priors"])
def test_missing_key_names_file_key_and_accepted_names(root, tmp_path, kind):
    r = copy_root(root, tmp_path / "r")
    rewrite(r / "h5_data" / TILE, drop=(H5_KEYS[kind][0],))
    with pytest.raises(KeyError) as e: H2Crop(r, "train")[0]
    msg = str(e.value)
    assert TILE in msg and f"no {kind} data" in msg
    for name in H5_KEYS[kind]: assert repr(name) in msg


@pytest.mark.parametrize("key,shape,expected", [
    ("S2_data", (12, 9, SIZE, SIZE), (12, 10, SIZE, SIZE)),
    ("S2_data", (6, 10, SIZE, SIZE), (12, 10, SIZE, SIZE)),
    ("EnMAP_data", (224, SIZE // 3, SIZE // 3), (218, SIZE // 3, SIZE // 3)),
    ("EnMAP_data", (218, SIZE, SIZE), (218, SIZE // 3, SIZE // 3)),
    ("priors", (3, SIZE, SIZE), (4, SIZE, SIZE)),
])
def test_wrong_shapes_name_key_expected_and_found(root, tmp_path, key, shape, expected):
    r = copy_root(root, tmp_path / "r")
    rewrite(r / "h5_data" / TILE, **{key: np.zeros(shape, np.int16 if "data" in key else np.uint8)})
    with pytest.raises(ValueError) as e: H2Crop(r, "train")[0]
    assert f"{key!r} has shape {shape}, expected {expected}" in str(e.value) and TILE in str(e.value)


def test_label_shape_and_tile_size_errors(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    rewrite(r / "h5_data" / TILE, label=np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match=r"'label' has shape \(96, 96\), expected \(4, H, W\)"): H2Crop(r, "train")[0]
    rewrite(r / "h5_data" / TILE, label=np.zeros((4, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="not a multiple of 3"): H2Crop(r, "train")[0]


def test_label_id_outside_taxonomy(root, tmp_path, tax):
    r = copy_root(root, tmp_path / "r")
    with h5py.File(r / "h5_data" / TILE) as f: label = f["label"][()]
    label[3, :2, :5] = 140
    rewrite(r / "h5_data" / TILE, label=label)
    with pytest.raises(ValueError, match=r"'label' level 4: ids outside level 4 of the taxonomy \(valid 0..101\): id 140: 10 px"):
        H2Crop(r, "train")[0]
    H2Crop(r, "train", validate=False)[0]  # validation can be switched off for trusted data


def test_priors_inconsistent_with_the_levels(root, tmp_path, tax):
    r = copy_root(root, tmp_path / "r")
    with h5py.File(r / "h5_data" / TILE) as f: priors = f["priors"][()]
    fine = int(priors[3][priors[3] > 0][0])
    wrong_l1 = next(i for i in range(1, 7) if i != tax.lookup(4, 1)[fine])
    mask = priors[3] == fine
    priors[0][mask] = wrong_l1
    rewrite(r / "h5_data" / TILE, priors=priors)
    with pytest.raises(ValueError) as e: H2Crop(r, "train")[0]
    msg = str(e.value)
    assert "'priors' is inconsistent with the taxonomy" in msg and f"lies under level-1 id {wrong_l1}" in msg
    assert f"{int(mask.sum())} px" in msg
    H2Crop(r, "train", with_priors=False)[0]  # labels alone are fine


def test_prior_id_out_of_range(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    with h5py.File(r / "h5_data" / TILE) as f: priors = f["priors"][()]
    priors[0, 0, 0] = 9
    rewrite(r / "h5_data" / TILE, priors=priors)
    with pytest.raises(ValueError, match=r"'priors' level 1: ids outside level 1 .* id 9: 1 px"): H2Crop(r, "train")[0]


def test_nan_in_float_s2(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    with h5py.File(r / "h5_data" / TILE) as f: s2 = f["S2_data"][()].astype(np.float32)
    s2[0, 0, 0, :3] = np.nan
    rewrite(r / "h5_data" / TILE, S2_data=s2)
    with pytest.raises(ValueError, match="'S2_data' holds 3 NaN/inf values"): H2Crop(r, "train")[0]


def test_missing_split_list_and_sample_files(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    (r / "data_lists" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="H2Crop val split list not found: .*val.txt"): H2Crop(r, "val")
    (r / "h5_data" / "train_00001.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 H2Crop train sample files are missing, e.g. .*train_00001.h5"):
        H2Crop(r, "train")
    with pytest.raises(FileNotFoundError, match="H2Crop sample file not found"): read_sample(r / "h5_data" / "train_00001.h5")
    shutil.rmtree(r / "data_lists")
    with pytest.raises(FileNotFoundError, match="no split lists"): H2Crop(r, "test")
    with pytest.raises(FileNotFoundError, match="H2Crop root folder not found"): H2Crop(tmp_path / "nowhere")


def test_corrupt_h5(root, tmp_path):
    r = copy_root(root, tmp_path / "r")
    (r / "h5_data" / TILE).write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match=f"cannot open H2Crop sample .*{TILE}"): H2Crop(r, "train")[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(window="may"), "unknown temporal window 'may'"),
    (dict(window=6), "unknown temporal window 6"),
    (dict(split="holdout"), "unknown split 'holdout'"),
    (dict(levels=(5,)), "level must be one of"),
    (dict(levels=(2, 2)), "distinct levels"),
    (dict(levels=()), "non-empty"),
    (dict(transform="flip"), "transform must be callable"),
])
def test_bad_dataset_arguments(root, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match): H2Crop(root, **kwargs)


def test_index_out_of_range(root):
    with pytest.raises(IndexError, match="index 3 out of range for 3 train samples"): H2Crop(root, "train")[3]


def test_bad_transform_and_cutmix_arguments():
    with pytest.raises(ValueError, match="p must be a probability"): CutMix(p=-0.1)
    with pytest.raises(ValueError, match="min_ratio"): CutMix(min_ratio=0)
    with pytest.raises(KeyError, match="needs an 'S2' entry"): CutMix()({"label": torch.zeros(2, 4, 6, 6)})
    with pytest.raises(ValueError, match="no normalisation statistics for \\['S1'\\]"): Normalize(keys=("S2", "S1"))
    with pytest.raises(ValueError, match="expected 218 bands"): Normalize()({"EnMAP": torch.zeros(10, 4, 4)})
    with pytest.raises(ValueError, match="cannot stack 'S2'"):
        collate_h2crop([{"S2": torch.zeros(6, 10, 3, 3)}, {"S2": torch.zeros(8, 10, 3, 3)}])


# ---------------------------------------------------------------- generator

def test_generator_is_seeded_and_consistent(tmp_path, tax):
    a = make_h2crop(tmp_path / "a", n_train=2, n_val=0, n_test=0, size=SIZE, seed=5, enmap="synthetic", prior_change=0.3)
    b = make_h2crop(tmp_path / "b", n_train=2, n_val=0, n_test=0, size=SIZE, seed=5, enmap="synthetic", prior_change=0.3)
    for name in ("train_00000", "train_00001"):
        x, y = read_sample(a / "h5_data" / f"{name}.h5"), read_sample(b / "h5_data" / f"{name}.h5")
        for k in x: assert np.array_equal(x[k], y[k])
        tax.check(x["label"]); tax.check(x["priors"])
        assert (x["priors"][3] != x["label"][3]).any()  # some parcels changed crop


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=64), "multiple of 3"), (dict(size=0), "multiple of 3"), (dict(enmap="none"), "enmap must be"),
    (dict(prior_change=-0.1), "prior_change"), (dict(n_train=1.5), "n_train must be a non-negative integer"),
    (dict(seed=-1), "seed must be a non-negative integer"), (dict(key_style="x"), "key_style"),
])
def test_generator_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match): make_h2crop(tmp_path / "x", **kwargs)
