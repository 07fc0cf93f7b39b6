"Bad input for cropkit.data.victoria: missing files, wrong column counts, unknown class ids, bad class maps."
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cropkit.core import data_path
from cropkit.data.victoria import VictoriaS2, read_class_map, read_victoria_csv, victoria


@pytest.fixture
def root(tmp_path):
    "A copy of the shipped Victoria folder, trimmed to 16 rows per split, that tests may damage."
    for name in ("train_dataset.csv", "test_dataset.csv"):
        pd.read_csv(data_path("victoria_s2", name)).iloc[::25].to_csv(tmp_path / name, index=False)
    shutil.copy(data_path("victoria_s2", "class_map.txt"), tmp_path / "class_map.txt")
    return tmp_path


def test_copy_loads(root):
    train, test = victoria(root)
    assert len(train) == len(test) == 16
    X, y, fid = train[3]
    assert X.shape == (73, 10) and X.dtype == torch.float32 and y.dtype == torch.int64 and isinstance(fid, int)
    assert train.classes[0] == "Bare Ground" and train.bands[-1] == "B12"


def test_missing_csv(root):
    (root / "test_dataset.csv").unlink()
    with pytest.raises(FileNotFoundError, match="Victoria Sentinel-2 csv not found: .*test_dataset.csv"):
        victoria(root)


def test_missing_class_map(root):
    (root / "class_map.txt").unlink()
    with pytest.raises(FileNotFoundError, match="class_map.txt"):
        victoria(root)


def test_wrong_column_count(root):
    df = pd.read_csv(root / "train_dataset.csv")
    df.iloc[:, :-10].to_csv(root / "train_dataset.csv", index=False)   # one date short
    with pytest.raises(ValueError, match=r"train_dataset.csv: expected 732 columns .* got 722"):
        victoria(root)


def test_wrong_leading_columns(root):
    df = pd.read_csv(root / "train_dataset.csv").rename(columns={"lc_id": "label"})
    df.to_csv(root / "train_dataset.csv", index=False)
    with pytest.raises(ValueError, match="first two columns must be 'lc_id,objectid'"):
        read_victoria_csv(root / "train_dataset.csv")


@pytest.mark.parametrize("bad", [8, -1, 13])
def test_unknown_lc_id(root, bad):
    df = pd.read_csv(root / "test_dataset.csv")
    df.loc[5, "lc_id"] = bad
    df.to_csv(root / "test_dataset.csv", index=False)
    with pytest.raises(ValueError, match=rf"test_dataset.csv: unknown lc_id value {bad}\b"):
        victoria(root)


def test_missing_and_non_numeric_values(root):
    df = pd.read_csv(root / "train_dataset.csv")
    df.loc[2, "b17"] = np.nan
    df.to_csv(root / "train_dataset.csv", index=False)
    with pytest.raises(ValueError, match="missing value in row 3 .*'b17'"):
        read_victoria_csv(root / "train_dataset.csv")
    df["b17"] = df["b17"].astype(object)
    df.loc[2, "b17"] = "cloud"
    df.to_csv(root / "train_dataset.csv", index=False)
    with pytest.raises(ValueError, match="column 'b17' holds the non-numeric value 'cloud'"):
        read_victoria_csv(root / "train_dataset.csv")


def test_bad_class_map(root):
    path = root / "class_map.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["7,Legumes,rgb(255, 140)"] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match="class_map.txt line 4.*rgb"):
        read_class_map(path)
    path.write_text("\n".join(lines + ["13,Urban again,rgb(1, 2, 3)"]) + "\n")
    with pytest.raises(ValueError, match="duplicate class code 13"):
        read_class_map(path)
    path.write_text("id;name\n")
    with pytest.raises(ValueError, match="expected the header 'value,class,colour'"):
        read_class_map(path)


def test_fewer_classes_in_map_rejects_ids(root):
    "A class map with 7 classes makes lc_id 7 unknown instead of silently mislabelled."
    path = root / "class_map.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="unknown lc_id value 7 .*0..6"):
        VictoriaS2(root / "train_dataset.csv", path)


def test_dataloader_batches(root):
    train, _ = victoria(root)
    X, y, ids = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert X.shape == (4, 73, 10) and y.shape == (4,) and ids.shape == (4,)
