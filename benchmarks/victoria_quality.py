"""Test-set quality of the default Victoria recipes against the reference figures of `data/README.md`.

Runs `cropkit train MODEL --dataset victoria --seed S` (the README's main job, as a user types it) for each
model and seed, reads each run's `results.json`, and prints accuracy, kappa, macro F1 and wall time next to
the reference accuracy of the BreizhCrops implementations (and the 500-tree random forest) measured on the
same split. Rows are appended to `--out`; `nbs/26_recipes.ipynb` shows that table.

    OMP_NUM_THREADS=1 python benchmarks/victoria_quality.py --models TempCNN RandomForest --seeds 0 1 2
"""
from __future__ import annotations
import argparse, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

REFERENCE_ACCURACY = {"TempCNN": 0.958, "TransformerEncoder": 0.960, "LSTM": 0.920, "RandomForest": 0.938}
"Overall accuracy of the reference implementations on the Victoria test series (`data/README.md`)."


def run_once(model: str, seed: int, workdir: Path) -> dict:
    "One `cropkit train` run in a fresh process; its test scores and wall-clock seconds."
    logdir = workdir / f"{model}-seed{seed}"
    t0 = time.perf_counter()
    exe = shutil.which("cropkit", path=str(Path(sys.executable).parent)) or shutil.which("cropkit")
    if exe is None: raise SystemExit("the cropkit command is not installed (pip install -e .)")
    done = subprocess.run([exe, "train", model, "--dataset", "victoria", "--seed", str(seed),
                           "--logdir", str(logdir), "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0: raise RuntimeError(f"cropkit train {model} --seed {seed} failed:\n{done.stderr}")
    res = json.loads((logdir / "results.json").read_text())
    return dict(model=model, seed=seed, accuracy=res["accuracy"], kappa=res["kappa"], f1_macro=res["f1_macro"],
                wall_seconds=round(wall, 1), reference_accuracy=REFERENCE_ACCURACY.get(model))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(REFERENCE_ACCURACY))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/victoria_quality.tsv")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            for seed in a.seeds:
                rows.append(run_once(model, seed, Path(tmp)))
                print("\t".join(str(v) for v in rows[-1].values()), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("model").agg(mean_accuracy=("accuracy", "mean"), min_accuracy=("accuracy", "min"),
                                         reference=("reference_accuracy", "first"), mean_wall=("wall_seconds", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, mode="a", header=not out.exists())
    return 0


if __name__ == "__main__":
    sys.exit(main())
