"""Test accuracy of the BreizhCrops reference implementations on the Victoria split, over several seeds.

The reference figures in `data/README.md` are single runs (seed 0) of the `breizhcrops` package's models with
the protocol written there: reflectance x 1e-4, Adam lr 1e-3, batch 32, 60 epochs, train on the 400 train
series, test on the 400 test series. This script repeats that protocol for several seeds so that cropkit's
mean over seeds (`benchmarks/victoria_quality.py`) can be set beside the reference's own mean and spread:

    OMP_NUM_THREADS=1 python benchmarks/victoria_reference.py --models TransformerEncoder --seeds 0 1 2

`--split grouped` uses cropkit's split by polygon instead (`cropkit.data.victoria.victoria(split="grouped")`, the
split of `cropkit train --mode grouped`; rows go to `victoria_reference_grouped.tsv`).

Rows are appended to `--out` (model, seed, accuracy, kappa, macro F1, seconds). Needs the `breizhcrops`
package (`pip install breizhcrops --no-deps`); only its model classes are used.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import import_reference, reference_model          # noqa: E402  (same folder)

# the hyperparameters data/README.md names for each reference figure (others: the package's defaults)
REFERENCE_HPARAMS = {"TempCNN": dict(kernel_size=5, hidden_dims=64, dropout=0.5),
                     "TransformerEncoder": dict(d_model=64, n_head=2, n_layers=5),
                     "LSTM": dict(hidden_dims=128, num_layers=4, bidirectional=True)}


def train_and_test(bc, name: str, train, test, seed: int, epochs: int = 60, lr: float = 1e-3, batch_size: int = 32) -> dict:
    "Train the reference model on `train` with the README protocol; test scores on `test`."
    from cropkit.evaluate.metrics import classification_metrics
    torch.manual_seed(seed); np.random.seed(seed)
    x, y = torch.as_tensor(train.X, dtype=torch.float32), torch.as_tensor(train.y, dtype=torch.long)
    model = reference_model(bc, name, x.shape[2], len(train.classes), x.shape[1], torch.device("cpu"),
                            **REFERENCE_HPARAMS[name])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.nll_loss(model(x[batch]), y[batch]).backward()      # the reference models return log-probabilities
            optimizer.step()
    model.eval()
    with torch.no_grad(): y_pred = model(torch.as_tensor(test.X, dtype=torch.float32)).argmax(1).numpy()
    scores = classification_metrics(np.asarray(test.y), y_pred)
    return {"accuracy": scores["accuracy"], "kappa": scores["kappa"], "f1_macro": scores["f1_macro"],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(REFERENCE_HPARAMS), choices=list(REFERENCE_HPARAMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--split", choices=("published", "grouped"), default="published")
    p.add_argument("--out", default=None, help="default benchmarks/results/victoria_reference[_grouped].tsv")
    a = p.parse_args(argv)
    a.out = a.out or f"benchmarks/results/victoria_reference{'_grouped' if a.split == 'grouped' else ''}.tsv"
    bc, _ = import_reference()
    if bc is None: sys.exit("the breizhcrops package is not importable: pip install breizhcrops --no-deps")
    from cropkit.data.victoria import victoria
    train, test = victoria(split=a.split)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists(): out.write_text("model\tseed\taccuracy\tkappa\tf1_macro\tseconds\n")
    for name in a.models:
        for seed in a.seeds:
            r = train_and_test(bc, name, train, test, seed, epochs=a.epochs)
            print(f"{name} seed {seed}: accuracy {r['accuracy']:.4f} kappa {r['kappa']:.4f} "
                  f"F1 {r['f1_macro']:.4f} ({r['seconds']} s)", flush=True)
            with out.open("a") as f:
                f.write("\t".join(map(str, [name, seed, r["accuracy"], r["kappa"], r["f1_macro"], r["seconds"]])) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
