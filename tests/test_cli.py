"""End-to-end tests of the `cropkit` command line: train / evaluate / tune / data / recipes on small data,
in-process through `cropkit.cli.main` and once through the installed entry point, and every bad-input case
(exit status 2, one line on stderr, nothing lost)."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cropkit.cli import main
from cropkit.train import load_checkpoint

SMALL = ["-H", "hidden_dims=8", "--batchsize", "64", "-q"]   # a tiny TempCNN: a Victoria epoch takes well under a second


def run(capsys, argv):
    "Run `cropkit argv` in-process; return (exit status, stdout, stderr)."
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("cropkit: error: ") and err.count("\n") == 1, err   # one line, no traceback
    assert "Traceback" not in err
    for f in fragments: assert f in err, err


@pytest.fixture(scope="module")
def victoria_run(tmp_path_factory):
    "One short Victoria training run shared by several tests."
    logdir = tmp_path_factory.mktemp("cli") / "tempcnn"
    assert main(["train", "TempCNN", "--dataset", "victoria", "--epochs", "2", "--logdir", str(logdir), *SMALL]) == 0
    return logdir


@pytest.fixture(scope="module")
def bzh_root(tmp_path_factory):
    from cropkit.data.synthetic import make_breizhcrops
    return make_breizhcrops(tmp_path_factory.mktemp("bzh") / "data", regions=("belle-ile",), n_parcels=40, seed=0)


# --- train / evaluate on Victoria -------------------------------------------------------------------------

def test_train_victoria_writes_results(victoria_run):
    files = sorted(p.name for p in victoria_run.iterdir())
    assert files == ["history.csv", "last.pt", "manifest.json", "predictions.csv", "results.json"]   # no validation data: no best.pt
    res = json.loads((victoria_run / "results.json").read_text())
    for key in ("accuracy", "kappa", "f1_macro", "f1_micro", "f1_weighted", "average_accuracy", "precision_macro",
                "model", "dataset", "seed", "epochs", "elapsed_seconds", "recipe", "checkpoint"):
        assert key in res, key
    assert (res["model"], res["dataset"], res["mode"], res["seed"], res["epochs"]) == ("TempCNN", "victoria", "evaluation", 0, 2)
    assert (res["train_size"], res["test_size"]) == (400, 400)
    assert res["recipe"]["hparams"]["hidden_dims"] == 8 and res["recipe"]["hparams"]["kernel_size"] == 5
    assert 0.0 <= res["accuracy"] <= 1.0
    preds = pd.read_csv(victoria_run / "predictions.csv")
    assert len(preds) == 400 and (preds.y_pred == preds.y_true).mean() == pytest.approx(res["accuracy"])
    assert (preds.checkpoint == "last.pt").all() and (preds.checkpoint_sha256 == res["checkpoint_sha256"]).all()
    assert len(pd.read_csv(victoria_run / "history.csv")) == 2
    ck = load_checkpoint(victoria_run / "last.pt")
    norm = ck["normalization"]
    assert norm["method"] == "standardize" and norm["indices"] == ["NDVI", "NDWI"] and len(norm["mean"]) == 12
    assert ck["input_dim"] == 12 and norm["bands"][:3] == ["B2", "B3", "B4"]


def test_evaluate_checkpoint_reproduces_test_scores(victoria_run, capsys, tmp_path):
    code, out, err = run(capsys, ["evaluate", victoria_run / "last.pt", "--output", tmp_path])
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics-last-victoria-evaluation.json").read_text())
    res = json.loads((victoria_run / "results.json").read_text())
    assert metrics["accuracy"] == pytest.approx(res["accuracy"]) and metrics["kappa"] == pytest.approx(res["kappa"])
    assert len(pd.read_csv(tmp_path / "predictions-last-victoria-evaluation.csv")) == 400
    assert "accuracy" in out
    assert metrics["checkpoint_sha256"] == res["checkpoint_sha256"]               # the scores name the checkpoint they belong to
    before = (tmp_path / "metrics-last-victoria-evaluation.json").read_bytes()
    code, out, err = run(capsys, ["evaluate", victoria_run / "last.pt", "--output", tmp_path])   # never overwritten silently
    assert_user_error(code, err, "metrics-last-victoria-evaluation.json", "--overwrite")
    assert (tmp_path / "metrics-last-victoria-evaluation.json").read_bytes() == before


def test_entry_point_subprocess(tmp_path):
    exe = shutil.which("cropkit") or str(Path(sys.executable).parent / "cropkit")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logdir = tmp_path / "run"
    p = subprocess.run([exe, "train", "TempCNN", "--epochs", "1", "--logdir", str(logdir), *SMALL],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "TempCNN on victoria (evaluation), test scores of last.pt (the last epoch): accuracy" in p.stdout
    assert json.loads((logdir / "results.json").read_text())["epochs"] == 1
    bad = subprocess.run([exe, "train", "TempCNN", "--epochs", "many"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "invalid int value: 'many'" in bad.stderr and "Traceback" not in bad.stderr


def test_random_forest(capsys, tmp_path):
    code, out, err = run(capsys, ["train", "RandomForest", "-H", "n_estimators=20", "--logdir", tmp_path / "rf"])
    assert code == 0, err
    res = json.loads((tmp_path / "rf" / "results.json").read_text())
    assert res["model"] == "RandomForest" and res["hparams"]["n_estimators"] == 20 and res["accuracy"] > 0.85
    code, out, err = run(capsys, ["evaluate", tmp_path / "rf" / "random_forest.skops"])
    assert code == 0, err
    assert json.loads((tmp_path / "rf" / "metrics-random_forest-victoria-evaluation.json").read_text())["accuracy"] == pytest.approx(res["accuracy"])


def test_resume_after_interrupt(capsys, tmp_path, monkeypatch):
    import cropkit.cli as cli
    logdir = tmp_path / "resume"
    argv = ["train", "TempCNN", "--epochs", "2", "--logdir", logdir, *SMALL]
    real = cli._epoch_printer
    def interrupting(args, epochs):
        def cb(learner, row):
            if row["epoch"] == 1: raise KeyboardInterrupt
        return cb
    monkeypatch.setattr(cli, "_epoch_printer", interrupting)
    code, _, err = run(capsys, argv)
    assert code == 130 and "--resume" in err
    assert load_checkpoint(logdir / "last.pt")["training_state"]["epoch"] == 1
    assert not (logdir / "results.json").exists()
    monkeypatch.setattr(cli, "_epoch_printer", real)
    code, _, err = run(capsys, argv + ["--resume"])
    assert code == 0, err
    assert json.loads((logdir / "results.json").read_text())["epochs"] == 2
    assert pd.read_csv(logdir / "history.csv")["epoch"].tolist() == [1, 2]


# --- BreizhCrops layout -----------------------------------------------------------------------------------

def test_train_and_evaluate_breizhcrops(bzh_root, capsys, tmp_path):
    logdir = tmp_path / "bzh"
    code, out, err = run(capsys, ["train", "tempcnn", "--dataset", "breizhcrops", "--root", bzh_root, "--mode", "unittest",
                                  "--epochs", "1", "--logdir", logdir, "-H", "hidden_dims=8", "-b", "16", "-q"])
    assert code == 0, err
    res = json.loads((logdir / "results.json").read_text())
    assert (res["dataset"], res["mode"], res["train_size"], res["recipe"]["batch_size"]) == ("breizhcrops", "unittest", 34, 16)
    ck = load_checkpoint(logdir / "last.pt")
    assert (ck["input_dim"], ck["num_classes"], ck["sequencelength"]) == (13, 9, 45)
    code, out, err = run(capsys, ["evaluate", logdir / "last.pt", "--dataset", "breizhcrops", "--root", bzh_root,
                                  "--mode", "unittest"])
    assert code == 0, err
    assert (logdir / "metrics-last-breizhcrops-unittest.json").exists()
    code, out, err = run(capsys, ["data", "summary", "--dataset", "breizhcrops", "--root", bzh_root, "--mode", "unittest"])
    assert code == 0 and "breizhcrops (unittest): train 34, test 34 series" in out and "permanent meadows" in out


def test_wrong_input_width_for_checkpoint(victoria_run, bzh_root, capsys):
    code, _, err = run(capsys, ["evaluate", victoria_run / "last.pt", "--dataset", "breizhcrops", "--root", bzh_root,
                                "--mode", "unittest"])
    assert_user_error(code, err, "expects 10 input bands, but the data have 13")


def test_recipe_options_change_the_run(capsys, tmp_path):
    logdir = tmp_path / "plain"
    code, _, err = run(capsys, ["train", "TempCNN", "--epochs", "1", "--indices", "none", "--augmentation", "none",
                                "--normalization", "none", "--scheduler", "none", "--logdir", logdir, *SMALL])
    assert code == 0, err
    res = json.loads((logdir / "results.json").read_text())
    assert (res["recipe"]["indices"], res["recipe"]["augmentation"], res["recipe"]["scheduler"]) == ([], {}, None)
    assert load_checkpoint(logdir / "last.pt")["input_dim"] == 10


def test_time_channel_round_trip(capsys, tmp_path):
    "--time-channel adds one input channel; evaluate restores it from the checkpoint and reproduces the test scores."
    logdir = tmp_path / "timed"
    code, _, err = run(capsys, ["train", "TempCNN", "--epochs", "1", "--time-channel", "--logdir", logdir, *SMALL])
    assert code == 0, err
    ck = load_checkpoint(logdir / "last.pt")
    assert ck["input_dim"] == 13 and ck["normalization"]["time_channel"] is True
    res = json.loads((logdir / "results.json").read_text())
    code, _, err = run(capsys, ["evaluate", logdir / "last.pt", "--output", tmp_path / "eval"])
    assert code == 0, err
    again = json.loads((tmp_path / "eval" / "metrics-last-victoria-evaluation.json").read_text())
    assert again["accuracy"] == pytest.approx(res["accuracy"])
    code, _, err = run(capsys, ["train", "TransformerEncoder", "--epochs", "1", "--no-time-channel", "-H", "d_model=8,n_layers=1",
                                "--batchsize", "64", "-q", "--logdir", tmp_path / "untimed"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "untimed" / "last.pt")["input_dim"] == 12      # 10 bands + NDVI + NDWI


# --- tune, data, recipes ----------------------------------------------------------------------------------

def test_tune(capsys, tmp_path):
    out_csv = tmp_path / "tune.csv"
    code, out, err = run(capsys, ["tune", "TempCNN", "--trials", "2", "--epochs", "1", "-H", "hidden_dims=8",
                                  "--output", out_csv, "-q"])
    assert code == 0, err
    table = pd.read_csv(out_csv)
    assert len(table) == 2 and table["valid_accuracy"].is_monotonic_decreasing
    assert table["learning_rate"].between(1e-4, 1e-2).all() and table["weight_decay"].between(1e-8, 1e-2).all()
    assert "learning_rate" in out and "valid_accuracy" in out
    code, _, err = run(capsys, ["tune", "TempCNN", "--mode", "evaluation", "--trials", "1"])
    assert_user_error(code, err, "tune needs validation data")


def test_data_summary_and_recipes(capsys):
    code, out, _ = run(capsys, ["data", "summary"])
    assert code == 0 and "train 400, test 400" in out and "73 time steps x 10 bands" in out
    code, out, _ = run(capsys, ["data", "summary", "--mode", "validation"])
    assert code == 0 and "train 277, valid 123" in out
    code, out, _ = run(capsys, ["recipes", "--dataset", "victoria"])
    assert code == 0 and "TempCNN" in out and "breizhcrops" not in out


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["train", "ResNet50"], ["unknown model 'ResNet50'", "TempCNN", "RandomForest"]),
    (["train", "TempCNN", "--dataset", "mnist"], ["unknown dataset 'mnist'", "victoria, breizhcrops"]),
    (["train", "TempCNN", "-H", "hidden_dims=8,dropout"], ["malformed --hyperparameter token 'dropout'"]),
    (["train", "TempCNN", "-H", "hidden_dims=8,,x=1"], ["empty entry"]),
    (["train", "TempCNN", "-H", "hidden_dim=8"], ["'hidden_dim' (did you mean 'hidden_dims'?)"]),
    (["train", "TempCNN", "-H", "dropout=1.5"], ["dropout=1.5 is invalid"]),
    (["train", "TempCNN", "--learning-rate", "-1"], ["lr must be a number > 0"]),
    (["train", "TempCNN", "--scheduler", "step"], ["unknown scheduler 'step'"]),
    (["train", "TempCNN", "--augmentation", "flip=1"], ["unknown augmentation ['flip']"]),
    (["train", "TempCNN", "--indices", "EVI"], ["unknown spectral index 'EVI'"]),
    (["train", "TempCNN", "--normalization", "minmax"], ["unknown normalization 'minmax'"]),
    (["train", "TempCNN", "--mode", "evaluation1"], ["unknown --mode 'evaluation1' for victoria"]),
    (["train", "TempCNN", "--dataset", "breizhcrops", "--root", "/no/such/dir"], ["BreizhCrops folder missing: --root /no/such/dir does not exist. Pass --download"]),
    (["train", "RandomForest", "--dataset", "breizhcrops"], ["victoria only"]),
    (["train", "TempCNN", "--device", "cuda:7"] if not torch.cuda.is_available() else ["train", "TempCNN", "--device", "tpu"],
     ["device"]),
    (["evaluate", "/no/such/best.pt"], ["checkpoint not found: /no/such/best.pt"]),
    (["tune", "RandomForest"], ["unknown model 'RandomForest'"]),
    (["tune", "TempCNN", "--lr-range", "1e-2", "1e-4"], ["lr_range"]),
    (["train"], ["the following arguments are required: model"]),
])
def test_bad_input(capsys, argv, fragments):
    code, _, err = run(capsys, argv)
    assert_user_error(code, err, *fragments)


def test_unwritable_logdir_fails_before_training(capsys, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    code, _, err = run(capsys, ["train", "TempCNN", "--logdir", tmp_path / "afile" / "run"])
    assert_user_error(code, err, "cannot write to logdir")
    code, _, err = run(capsys, ["train", "TempCNN", "--logdir", tmp_path / "afile"])
    assert_user_error(code, err, "cannot write to logdir", "not a folder")


def test_corrupt_checkpoint(capsys, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"garbage")
    code, _, err = run(capsys, ["evaluate", tmp_path / "best.pt"])
    assert_user_error(code, err, "best.pt is not a checkpoint")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(capsys, tmp_path, monkeypatch):
    import cropkit.train.recipes as recipes
    real_get_model = recipes.get_model
    def nan_in_epoch_2(*args, **kwargs):
        model = real_get_model(*args, **kwargs)
        forward, calls = model.forward, {"n": 0}
        def poisoned(x):
            calls["n"] += model.training
            out = forward(x)
            return out * float("nan") if model.training and calls["n"] > 7 else out   # 7 batches of 64 per epoch
        model.forward = poisoned
        return model
    monkeypatch.setattr(recipes, "get_model", nan_in_epoch_2)
    logdir = tmp_path / "nan"
    code, _, err = run(capsys, ["train", "TempCNN", "--epochs", "3", "--logdir", logdir, *SMALL])
    assert_user_error(code, err, "loss is nan at epoch 2", "epoch 1")
    assert load_checkpoint(logdir / "last.pt")["training_state"]["epoch"] == 1
    assert pd.read_csv(logdir / "history.csv")["epoch"].tolist() == [1]
    assert not (logdir / "results.json").exists()


def test_breizhcrops_run_reports_drops_and_mapping(capsys, tmp_path):
    "Parcels dropped by the loader are said on the console and stored in results.json and the manifest, with the mapping's hash."
    from cropkit.data.synthetic import make_breizhcrops
    root = make_breizhcrops(tmp_path / "bzh", regions=("belle-ile",), n_parcels=30, seed=3)
    index = root / "2017" / "L1C" / "belle-ile.csv"
    from cropkit.data.breizhcrops import BreizhCrops
    known = len(BreizhCrops("belle-ile", root=root, load_timeseries=False))
    df = pd.read_csv(index)
    lowered = df.index[df.CODE_CULTU.isin(BreizhCrops("belle-ile", root=root, load_timeseries=False).index.CODE_CULTU)][:5]
    df.loc[lowered, "CODE_CULTU"] = df.loc[lowered, "CODE_CULTU"].str.lower()   # 5 known parcels with a lower-cased code
    df.to_csv(index, index=False)
    logdir = tmp_path / "run"
    code, out, err = run(capsys, ["train", "TempCNN", "--dataset", "breizhcrops", "--root", root, "--mode", "unittest",
                                  "--epochs", "1", "--logdir", logdir, "-H", "hidden_dims=8"])
    assert code == 0, err
    assert f"train {known - 5}, test {known - 5} series (dropped: train belle-ile: {len(df) - known + 5} unknown code" in out
    res = json.loads((logdir / "results.json").read_text())
    part = res["data"]["train"]["parts"][0]
    assert part["drops"]["counts"] == {"unknown_code": len(df) - known + 5} and len(part["classmapping_sha256"]) == 64
    manifest = json.loads((logdir / "manifest.json").read_text())
    assert manifest["data"]["splits"]["train"]["parts"][0]["classmapping_sha256"] == part["classmapping_sha256"]
    assert {"versions", "threads", "device", "seed"} <= set(manifest)


def test_resume_with_another_mode_is_refused_naming_it(capsys, tmp_path):
    "Issue 15's first reproduction: --resume under another fold must not train on that fold's test region."
    from cropkit.data.synthetic import make_breizhcrops
    root = make_breizhcrops(tmp_path / "bzh", regions=("frh01", "frh02", "frh03", "frh04"), n_parcels=12, seed=2)
    logdir = tmp_path / "run"
    base = ["train", "TempCNN", "--dataset", "breizhcrops", "--root", root, "-H", "hidden_dims=8", "--logdir", logdir, "-q"]
    code, _, err = run(capsys, base + ["--mode", "evaluation1", "--epochs", "1"])
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in logdir.iterdir()}
    code, _, err = run(capsys, base + ["--mode", "evaluation2", "--epochs", "2", "--resume"])
    assert code == 2 and "belongs to another run" in err and "mode: 'evaluation1' in the checkpoint, 'evaluation2' now" in err, err
    assert {p.name: p.read_bytes() for p in logdir.iterdir()} == before
    code, _, err = run(capsys, base + ["--mode", "evaluation1", "--epochs", "1"])       # a second run into a finished logdir
    assert_user_error(code, err, "already holds a run", "--overwrite")
    assert {p.name: p.read_bytes() for p in logdir.iterdir()} == before


def test_victoria_grouped_split(capsys, tmp_path):
    "--mode grouped: trained and scored on the split by polygon; evaluating the model later uses that split too."
    code, out, err = run(capsys, ["train", "RandomForest", "--mode", "grouped", "-H", "n_estimators=20", "--logdir", tmp_path / "rf"])
    assert code == 0, err
    assert "victoria (grouped)" in out or "RandomForest on victoria (grouped)" in out, out
    res = json.loads((tmp_path / "rf" / "results.json").read_text())
    assert 0.5 < res["accuracy"] < 0.99
    code, out, err = run(capsys, ["evaluate", tmp_path / "rf" / "random_forest.skops"])
    assert code == 0, err
    assert json.loads((tmp_path / "rf" / "metrics-random_forest-victoria-grouped.json").read_text())["accuracy"] == pytest.approx(res["accuracy"])
    assert json.loads((tmp_path / "rf" / "manifest.json").read_text())["data"]["mode"] == "grouped"
    code, out, err = run(capsys, ["evaluate", tmp_path / "rf" / "random_forest.skops", "--mode", "evaluation"])
    assert code == 0 and "was trained on victoria mode 'grouped'; scored here on mode 'evaluation'" in out, out + err


def test_train_bf16_cpu_opt_in(tmp_path, capsys):
    "--bf16-cpu trains under bf16 autocast on CPU, says so, and records it; resuming without it is refused."
    logdir = tmp_path / "bf16"
    argv = ["train", "TempCNN", "--dataset", "victoria", "--epochs", "1", "--device", "cpu", "--logdir", logdir, "-H", "hidden_dims=8", "--batchsize", "64"]
    code, out, err = run(capsys, [*argv, "--bf16-cpu"])
    assert code == 0, err
    assert "on cpu with" in out and "in bf16" in out
    assert json.loads((logdir / "manifest.json").read_text())["training"]["amp"] == "always"
    assert 0 <= json.loads((logdir / "results.json").read_text())["accuracy"] <= 1
    code, out, err = run(capsys, [*argv[:4], "--epochs", "2", *argv[6:], "--resume", "-q"])
    assert code == 2 and "amp" in err, err
