"""`cropkit predict` and `load_predictor` on the real Victoria series: the predictions of a finished run are reproduced
from its checkpoint, from the dataset and from a table of unlabelled series; bad input is refused by name."""
import numpy as np
import pandas as pd
import pytest

from cropkit.cli import main
from cropkit.data.victoria import victoria
from cropkit.train.inference import load_predictor

SMALL = ["-H", "hidden_dims=8", "--epochs", "1", "--batchsize", "64", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("victoria") / "run"
    assert main(["train", "TempCNN", "--logdir", str(logdir), *SMALL]) == 0
    return logdir


def test_predict_reproduces_the_run(run_dir, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir / "last.pt"), "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "TempCNN: 400 series of victoria evaluation test predicted; accuracy" in text
    got, ref = pd.read_csv(out), pd.read_csv(run_dir / "predictions.csv")
    assert list(got.columns[:8]) == ["checkpoint", "checkpoint_sha256", "sample", "field_id", "y_true", "y_pred", "class", "confidence"]
    assert (got.y_pred.values == ref.y_pred.values).all() and (got.checkpoint_sha256 == ref.checkpoint_sha256).all()
    np.testing.assert_allclose(got.filter(like="score_").values, ref.filter(like="score_").values, atol=1e-6)
    assert main(["predict", str(run_dir / "last.pt"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_unlabelled_table(run_dir, tmp_path, capsys):
    "Test series as a long table without labels (one row per series and date, bands in another order): same classes."
    _, test = victoria()
    p = load_predictor(run_dir / "last.pt", "cpu")
    X = test.X[:50] if hasattr(test, "X") else np.stack([test[i][0].numpy() for i in range(50)])
    n, T, D = X.shape
    rows = pd.DataFrame(X.reshape(-1, D), columns=p.bands)
    rows.insert(0, "date", np.tile(pd.date_range("2019-01-01", periods=T, freq="5D").strftime("%Y-%m-%d"), n))
    rows.insert(0, "id", np.repeat(np.arange(1000, 1000 + n), T))
    table = rows[["id", "date", *p.bands[::-1]]].sample(frac=1.0, random_state=0)     # shuffled rows, reversed columns
    table.to_csv(tmp_path / "series.csv", index=False)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir / "last.pt"), "--csv", str(tmp_path / "series.csv"), "--out", str(out)]) == 0
    got = pd.read_csv(out)
    assert (got.y_true == -1).all() and got.field_id.tolist() == list(range(1000, 1000 + n))
    assert (got.y_pred.values == p.predict_proba(X).argmax(1)).all()
    assert "accuracy" not in capsys.readouterr().out                       # nothing to score without labels
    table.drop(columns=["B11"]).to_csv(tmp_path / "lacks.csv", index=False)
    assert main(["predict", str(run_dir / "last.pt"), "--csv", str(tmp_path / "lacks.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "lacks the column(s) ['B11']" in capsys.readouterr().err
    table[table.date != table.date.iloc[0]].to_csv(tmp_path / "short.csv", index=False)
    assert main(["predict", str(run_dir / "last.pt"), "--csv", str(tmp_path / "short.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    assert f"{T} time steps" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_predict_random_forest(tmp_path, capsys):
    logdir = tmp_path / "rf"
    assert main(["train", "RandomForest", "--logdir", str(logdir), "-H", "n_estimators=20", "-q"]) == 0
    out = tmp_path / "pred.csv"
    assert main(["predict", str(logdir / "random_forest.skops"), "--out", str(out)]) == 0
    got, ref = pd.read_csv(out), pd.read_csv(logdir / "predictions.csv")
    assert (got.y_pred.values == ref.y_pred.values).all()
    assert load_predictor(logdir / "random_forest.skops").bands == list(victoria()[0].bands)
