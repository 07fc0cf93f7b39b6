"""Time to reference accuracy on Victoria: wall-clock training time until the test accuracy first reaches the
reference figure (0.958 for TempCNN, `data/README.md`), for cropkit's recipe on its Lightning engine and for the
reference protocol (the `breizhcrops` package's TempCNN, reflectance x 1e-4, Adam 1e-3, batch 32), measured in the
same run, same process, same thread count, seeds 0-2. Test accuracy is computed after every epoch; the time spent
computing it is not counted for either side. Prints each run and the ratio of the mean times (cropkit / reference):

    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_accuracy.py --seeds 0 1 2

A run that never reaches the target within its epochs counts with its whole training time and is marked "not reached".
Each line also gives the seconds per epoch. `--settings reference` trains cropkit's engine with the reference's own
settings (no normalisation, Adam 1e-3 without schedule, batch 32, no augmentation): the difference is then the engine
alone. `--settings fast` trains the Victoria recipe made for speed (half the channels, constant learning rate, no
mixup). `--epochs`, `--batch-size`, `--lr` and `--scheduler` change the cropkit recipe; `--bf16-cpu` trains cropkit's side
under bf16 autocast (`amp="always"`, as `cropkit train --bf16-cpu`); the reference side stays float32, as it is published.
"""
from __future__ import annotations
import argparse, dataclasses, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import import_reference, reference_model          # noqa: E402  (same folder)
from victoria_reference import REFERENCE_HPARAMS                       # noqa: E402

TARGET = 0.958


def reference_settings():
    "The reference protocol's settings as a cropkit `Recipe` (raw reflectance, Adam 1e-3, no schedule, batch 32)."
    from cropkit.train.recipes import Recipe
    return Recipe("TempCNN", epochs=60, lr=1e-3, batch_size=32, optimizer="adam", scheduler=None,
                  normalization="none", hparams=REFERENCE_HPARAMS["TempCNN"])


def reference_run(bc, train, test, seed: int, epochs: int = 60, target: float = TARGET) -> dict:
    "The reference protocol; seconds of training until the test accuracy first reaches `target`."
    torch.manual_seed(seed); np.random.seed(seed)
    x, y = torch.as_tensor(train.X, dtype=torch.float32), torch.as_tensor(train.y, dtype=torch.long)
    xt, yt = torch.as_tensor(test.X, dtype=torch.float32), np.asarray(test.y)
    model = reference_model(bc, "TempCNN", x.shape[2], len(train.classes), x.shape[1], torch.device("cpu"),
                            **REFERENCE_HPARAMS["TempCNN"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    clock, reached = 0.0, None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(32):
            optimizer.zero_grad()
            F.nll_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
        clock += time.perf_counter() - t0
        model.eval()
        with torch.no_grad(): acc = float((model(xt).argmax(1).numpy() == yt).mean())
        if acc >= target: reached = epoch; break
    return {"side": "reference", "seed": seed, "epoch": reached or epochs, "reached": reached is not None,
            "seconds": clock, "accuracy": acc}


FAST_COMMAND = ["train", "TempCNN", "--dataset", "victoria", "-H", "hidden_dims=32", "--lr", "5e-3", "--scheduler", "none",
                "--augmentation", "none", "--epochs", "40"]


def fast_settings():
    """The Victoria TempCNN recipe made for speed: half the channels (hidden_dims 32), a constant learning rate of 5e-3
    and no mixup, built by the CLI from `cropkit ` + `FAST_COMMAND`, so that the command in the README trains the same."""
    from cropkit.cli import build_parser, recipe_from_args
    return recipe_from_args(build_parser().parse_args(FAST_COMMAND))


def cropkit_run(recipe, train, test, seed: int, target: float = TARGET, amp=True) -> dict:
    "cropkit's `train_recipe` on the engine; seconds of training until the test accuracy first reaches `target`."
    from cropkit.train.recipes import evaluate_model
    from cropkit.train.engine import Learner
    state = {"eval": 0.0, "reached": None, "acc": None, "epoch": 0}

    class Reached(Exception): pass

    def on_epoch(learner: Learner, row):
        t0 = time.perf_counter()
        acc = evaluate_model(learner.model, test, learner.task.info["normalization"], device="cpu").metrics()["accuracy"]
        state["eval"] += time.perf_counter() - t0
        state["acc"], state["epoch"] = acc, row["epoch"]
        if acc >= target: state["reached"] = row["epoch"]; raise Reached

    from cropkit.train.recipes import train_recipe
    t0 = time.perf_counter()
    try: train_recipe(recipe, train, None, seed=seed, device="cpu", callbacks=[on_epoch], amp=amp)
    except Reached: pass
    seconds = time.perf_counter() - t0 - state["eval"]
    return {"side": "cropkit", "seed": seed, "epoch": state["epoch"], "reached": state["reached"] is not None,
            "seconds": seconds, "accuracy": state["acc"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="cropkit recipe epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="cropkit recipe batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="cropkit recipe peak learning rate (default: the recipe's)")
    p.add_argument("--scheduler", default=None, help="cropkit recipe scheduler: onecycle, cosine, warmup_cosine or none")
    p.add_argument("--settings", choices=("recipe", "reference", "fast"), default="recipe",
                   help="cropkit's default Victoria recipe, the reference protocol's settings on cropkit's engine, or "
                        "the recipe made for speed (hidden_dims 32, constant lr, no mixup)")
    p.add_argument("--bf16-cpu", action="store_true", help="cropkit side under bf16 autocast on the CPU")
    a = p.parse_args(argv)
    from cropkit.data.victoria import victoria
    from cropkit.train.recipes import get_recipe
    bc, _ = import_reference()
    train, test = victoria()
    changes = {k: v for k, v in dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, scheduler=a.scheduler).items()
               if v is not None}
    recipe = {"recipe": lambda: get_recipe("victoria", "TempCNN"), "reference": reference_settings, "fast": fast_settings}[a.settings]()
    recipe = dataclasses.replace(recipe, **changes)
    print(f"target test accuracy {TARGET}; cropkit recipe: epochs {recipe.epochs}, batch {recipe.batch_size}, lr {recipe.lr}, "
          f"{recipe.scheduler}, {recipe.hparams}, augmentation {recipe.augmentation}; threads {torch.get_num_threads()}" + ("; cropkit in bf16" if a.bf16_cpu else ""))
    rows = []
    for seed in a.seeds:
        for run in (lambda: reference_run(bc, train, test, seed), lambda: cropkit_run(recipe, train, test, seed, amp="always" if a.bf16_cpu else True)):
            r = run(); rows.append(r)
            print(f"{r['side']:>9} seed {seed}: {('epoch ' if r['reached'] else 'not reached in ') + str(r['epoch'])}, "
                  f"{r['seconds']:.1f} s of training ({r['seconds'] / r['epoch']:.3f} s/epoch), "
                  f"test accuracy {r['accuracy']:.4f}", flush=True)
    mean = {s: float(np.mean([r["seconds"] for r in rows if r["side"] == s])) for s in ("reference", "cropkit")}
    missed = sum(not r["reached"] for r in rows if r["side"] == "cropkit")
    per_epoch = {s: sum(r["seconds"] for r in rows if r["side"] == s) / sum(r["epoch"] for r in rows if r["side"] == s)
                 for s in ("reference", "cropkit")}
    print(f"seconds per epoch: reference {per_epoch['reference']:.3f}, cropkit {per_epoch['cropkit']:.3f}; "
          f"ratio {per_epoch['cropkit'] / per_epoch['reference']:.2f}")
    print(f"mean time to {TARGET}: reference {mean['reference']:.1f} s, cropkit {mean['cropkit']:.1f} s; "
          f"ratio cropkit/reference {mean['cropkit'] / mean['reference']:.2f}" + (f" ({missed} cropkit run(s) did not reach it)" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
