"""Grouped cross-validation of a Victoria recipe on the *training* series only (never the test series).

Used to choose the default recipes in `cropkit.train.recipes.RECIPES`; the results are summarised in
`nbs/26_recipes.ipynb`. Folds keep whole polygons together (`cropkit.train.recipes.sample_groups`), because
pixels of one polygon are near-duplicates and would otherwise leak between fit and validation parts.

    OMP_NUM_THREADS=1 python tools/recipe_cv.py TempCNN --seeds 0,1,2
    OMP_NUM_THREADS=1 python tools/recipe_cv.py TransformerEncoder --changes '{"indices": [], "augmentation": {}}'
    OMP_NUM_THREADS=1 python tools/recipe_cv.py RandomForest --changes '{"indices": ["NDVI", "NDWI"]}'

Each run appends one line to `--out` (tab-separated: model, changes, seeds, per-seed means, overall mean, seconds).
"""
from __future__ import annotations
import argparse, dataclasses, json, sys, time
from pathlib import Path

import numpy as np


def recipe_with(model: str, changes: dict):
    "The default Victoria recipe of `model` with `changes` (recipe fields; 'augmentation' replaced whole)."
    from cropkit.train.recipes import get_recipe
    recipe = get_recipe("victoria", model)
    changes = dict(changes)
    if "augmentation" in changes: recipe = dataclasses.replace(recipe, augmentation=changes.pop("augmentation"))
    if "indices" in changes: changes["indices"] = tuple(changes["indices"])
    return recipe.replace(**changes)


def forest_cv(train, folds: int, seed: int, changes: dict) -> list[float]:
    "Validation accuracies of the 500-tree random forest on grouped folds; `changes`: indices and scikit-learn options."
    from cropkit.train.baselines import RandomForestBaseline
    from cropkit.train.recipes import normalize, sample_groups, stratified_folds
    indices = tuple(changes.get("indices", ()))
    accs = []
    for fit_part, valid_part in stratified_folds(train, folds, seed, sample_groups(train)):
        if indices:
            fit_part = normalize(fit_part, "standardize", indices=indices)
            valid_part = normalize(valid_part, fit_part.normalization)
        rf_kwargs = {k: v for k, v in changes.items() if k != "indices"}
        rf = RandomForestBaseline(**{"n_estimators": 500, **rf_kwargs}, seed=seed, n_jobs=1).fit(fit_part)
        accs.append(rf.evaluate(valid_part)["accuracy"])
    return accs


def network_cv(train, model: str, folds: int, seed: int, changes: dict) -> list[float]:
    "Validation accuracies of the (changed) default recipe of `model` on grouped folds."
    from cropkit.train.recipes import sample_groups
    from cropkit.train.tune import cross_validate
    table = cross_validate(recipe_with(model, changes), train, folds=folds, seed=seed, groups=sample_groups(train))
    return table["valid_accuracy"].tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="registry name or RandomForest")
    p.add_argument("--changes", default="{}", help="JSON dict of recipe fields to change")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fold/training seeds")
    p.add_argument("--out", default="benchmarks/results/recipe_cv.tsv")
    a = p.parse_args(argv)
    from cropkit.data.victoria import victoria
    train, _ = victoria()                                   # the test series are not touched
    changes, seeds, t0 = json.loads(a.changes), [int(s) for s in a.seeds.split(",")], time.perf_counter()
    per_seed = []
    for seed in seeds:
        accs = forest_cv(train, a.folds, seed, changes) if a.model.lower() == "randomforest" else \
            network_cv(train, a.model, a.folds, seed, changes)
        per_seed.append(float(np.mean(accs)))
        print(f"{a.model} {a.changes} seed {seed}: folds {' '.join(f'{v:.3f}' for v in accs)} mean {per_seed[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    line = "\t".join([a.model, a.changes, a.seeds, " ".join(f"{v:.4f}" for v in per_seed), f"{np.mean(per_seed):.4f}", f"{seconds:.0f}"])
    print(f"{a.model} {a.changes}: mean over seeds {np.mean(per_seed):.4f} ({seconds:.0f} s)")
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists(): out.write_text("model\tchanges\tseeds\tper_seed_mean\tmean\tseconds\n")
    with out.open("a") as f: f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
