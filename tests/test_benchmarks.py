"""The quality benchmarks' scripts run and write the rows that `nbs/26_recipes.ipynb` reads.

`benchmarks/victoria_reference.py` is run for one epoch of one model (the real runs take minutes); the
test checks the row it appends and that it refuses a model it has no reference hyperparameters for.
"""
import subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("breizhcrops.models", reason="the reference package `breizhcrops` is not installed")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "victoria_reference.py"


def run(*args, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300, **kwargs)


def test_reference_rerun_appends_one_row_per_model_and_seed(tmp_path):
    out = tmp_path / "ref.tsv"
    for seed in (0, 1):
        r = run("--models", "TempCNN", "--seeds", str(seed), "--epochs", "1", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert f"TempCNN seed {seed}: accuracy" in r.stdout
    rows = pd.read_csv(out, sep="\t")
    assert list(rows.columns) == ["model", "seed", "accuracy", "kappa", "f1_macro", "seconds"]
    assert rows.model.tolist() == ["TempCNN", "TempCNN"] and rows.seed.tolist() == [0, 1]
    assert rows.accuracy.between(0, 1).all() and (rows.seconds > 0).all()


def test_reference_rerun_refuses_unknown_models(tmp_path):
    r = run("--models", "OmniScaleCNN", "--out", str(tmp_path / "ref.tsv"))
    assert r.returncode == 2 and "invalid choice: 'OmniScaleCNN'" in r.stderr
    assert not (tmp_path / "ref.tsv").exists()


def test_time_to_accuracy_runs_both_sides_and_prints_the_ratios():
    "One seed, cropkit's recipe cut to 2 epochs under bf16 on the CPU: both sides' lines and both ratios are printed."
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_time_to_accuracy.py"), "--seeds", "0",
                        "--epochs", "2", "--bf16-cpu"], capture_output=True, text=True, cwd=ROOT,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cropkit in bf16" in r.stdout and "reference seed 0: epoch" in r.stdout
    assert "cropkit seed 0: not reached in 2" in r.stdout or "cropkit seed 0: epoch" in r.stdout
    assert "seconds per epoch: reference" in r.stdout and "ratio cropkit/reference" in r.stdout


def test_time_to_accuracy_fast_settings_train_the_smaller_tempcnn():
    "`--settings fast` builds its recipe through the CLI (hidden_dims 32, lr 5e-3, no schedule, no augmentation) and runs."
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_time_to_accuracy.py"), "--seeds", "0",
                        "--settings", "fast", "--epochs", "1"], capture_output=True, text=True, cwd=ROOT,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    assert "epochs 1, batch 32, lr 0.005, None" in header and "'hidden_dims': 32" in header and "augmentation {}" in header
    assert "ratio cropkit/reference" in r.stdout
