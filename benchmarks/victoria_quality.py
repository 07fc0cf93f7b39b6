"""Test-set quality of the default Victoria recipes against the reference figures of `data/README.md`.

Runs `cropkit train MODEL --dataset victoria --seed S` (the README's main job, as a user types it) for each
model and seed, reads each run's `results.json`, and prints accuracy, kappa, macro F1 and wall time next to
the reference accuracy of the BreizhCrops implementations (and the 500-tree random forest) measured on the
same split. Rows are appended to `--out`; `nbs/25_train.recipes.ipynb` shows that table.

    OMP_NUM_THREADS=1 python benchmarks/victoria_quality.py --models TempCNN RandomForest --seeds 0 1 2

`--split grouped` trains and tests on cropkit's split by polygon instead (`--mode grouped`: all 800 series pooled,
no polygon on both sides; rows go to `victoria_quality_grouped.tsv`). The reference accuracies printed beside it
are those of the published split, so compare with `victoria_reference.py --split grouped` instead.
"""
from __future__ import annotations
import argparse, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

REFERENCE_ACCURACY = {"TempCNN": 0.958, "TransformerEncoder": 0.960, "LSTM": 0.920, "RandomForest": 0.938}
"Overall accuracy of the reference implementations on the Victoria test series (`data/README.md`)."


def run_once(model: str, seed: int, workdir: Path, split: str = "published") -> dict:
    "One `cropkit train` run in a fresh process; its test scores and wall-clock seconds."
    logdir = workdir / f"{model}-seed{seed}"
    t0 = time.perf_counter()
    exe = shutil.which("cropkit", path=str(Path(sys.executable).parent)) or shutil.which("cropkit")
    if exe is None: raise SystemExit("the cropkit command is not installed (pip install -e .)")
    mode = ["--mode", "grouped"] if split == "grouped" else []
    done = subprocess.run([exe, "train", model, "--dataset", "victoria", *mode, "--seed", str(seed),
                           "--logdir", str(logdir), "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0: raise RuntimeError(f"cropkit train {model} --seed {seed} failed:\n{done.stderr}")
    res = json.loads((logdir / "results.json").read_text())
    return dict(model=model, seed=seed, accuracy=res["accuracy"], kappa=res["kappa"], f1_macro=res["f1_macro"],
                wall_seconds=round(wall, 1),
                reference_accuracy=REFERENCE_ACCURACY.get(model) if split == "published" else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(REFERENCE_ACCURACY))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--split", choices=("published", "grouped"), default="published")
    p.add_argument("--out", default=None, help="default benchmarks/results/victoria_quality[_grouped].tsv")
    a = p.parse_args(argv)
    a.out = a.out or f"benchmarks/results/victoria_quality{'_grouped' if a.split == 'grouped' else ''}.tsv"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            for seed in a.seeds:
                rows.append(run_once(model, seed, Path(tmp), a.split))
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
