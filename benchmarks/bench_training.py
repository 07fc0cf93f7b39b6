"""Training throughput of cropkit's models against the BreizhCrops reference implementations.

For every model, both implementations are built with the same (BreizhCrops default) hyperparameters and
trained on the same random batches — same input size, batch size, device and thread count — with the same
step: forward, negative log-likelihood loss, backward, Adam update. The script prints the training samples
per second of each and the ratio cropkit / BreizhCrops (> 1: cropkit is faster). Measurements of the two
implementations alternate (A B A B ...) and the best round counts, so that load from other processes on a
shared machine hits both alike.

    python benchmarks/bench_training.py                      # CPU, BreizhCrops input size (45 x 13), batch 64
    python benchmarks/bench_training.py --device cuda --batch-size 1024
    python benchmarks/bench_training.py --models TempCNN LSTM --seconds 2

The `breizhcrops` package (0.0.4.1, installed with --no-deps) is only needed for the reference; its package
__init__ imports geopandas for the dataset class, which the models do not need, so missing optional
dependencies are stubbed. Without the package the script says so and measures cropkit alone.
"""
from __future__ import annotations
import argparse, importlib, json, sys, time, types, warnings

import torch
import torch.nn.functional as F

from cropkit.core import autocast, get_device, set_seed
from cropkit.models.registry import MODELS, get_model

OPTIONAL_DEPS = ("geopandas", "h5py", "requests", "tqdm", "pandas")


def import_reference():
    "`breizhcrops.models`, stubbing optional dependencies its package __init__ imports; None if not installed."
    stubbed = []
    for _ in range(len(OPTIONAL_DEPS) + 1):
        try:
            return importlib.import_module("breizhcrops.models"), stubbed
        except ModuleNotFoundError as e:
            if e.name == "breizhcrops" or e.name not in OPTIONAL_DEPS or e.name in sys.modules: return None, stubbed
            sys.modules[e.name] = types.ModuleType(e.name)   # only the dataset code uses it
            stubbed.append(e.name)
            for mod in [m for m in sys.modules if m.startswith("breizhcrops")]: del sys.modules[mod]
    return None, stubbed


def reference_model(bc, name: str, input_dim: int, num_classes: int, length: int, device: torch.device, **hparams):
    "The BreizhCrops model `name` with its default hyperparameters (TempCNN, LSTM, Transformer: `hparams` override them)."
    if name == "TempCNN": return bc.TempCNN(input_dim=input_dim, num_classes=num_classes, sequencelength=length, **hparams)
    if name == "LSTM": return bc.LSTM(input_dim=input_dim, num_classes=num_classes, **hparams)
    if name == "TransformerEncoder": return bc.TransformerModel(input_dim=input_dim, num_classes=num_classes, **hparams)
    if name == "PETransformerModel": return bc.PETransformerModel(input_dim=input_dim, num_classes=num_classes)
    if name == "MSResNet": return bc.MSResNet(input_dim=input_dim, num_classes=num_classes)
    if name == "InceptionTime": return bc.InceptionTime(num_classes=num_classes, input_dim=input_dim, device=device)
    if name == "StarRNN":
        return bc.StarRNN(input_dim=input_dim, num_classes=num_classes, bidirectional=False, use_batchnorm=False,
                          use_layernorm=True, device=device)
    if name == "OmniScaleCNN": return bc.OmniScaleCNN(input_dim=input_dim, num_classes=num_classes, sequencelength=length)
    raise KeyError(name)


def all_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    "Parameters of `model`, including those of modules kept in plain Python lists (BreizhCrops' InceptionTime)."
    from cropkit.models.registry import breizhcrops_state_dict
    seen, params = set(), []
    for p in list(model.parameters()) + [v for v in breizhcrops_state_dict(model).values() if v.requires_grad]:
        if id(p) not in seen: seen.add(id(p)); params.append(p)
    return params


class Stepper:
    "One model with its optimizer and data; `run(seconds)` trains and returns samples/s."
    def __init__(self, model, params, x, y, device):
        self.model, self.x, self.y, self.device = model.to(device).train(), x, y, device
        self.opt = torch.optim.Adam(params, lr=1e-4)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device):
            out = self.model(self.x)
        F.nll_loss(out.float(), self.y).backward()
        self.opt.step()

    def run(self, seconds: float) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self.step(); sync()                                     # warm-up (lazy init, cuDNN autotuning)
        n, t0 = 0, time.perf_counter()
        while True:
            self.step(); n += 1
            if n % 2 == 0:
                sync()
                if time.perf_counter() - t0 >= seconds: break
        return n * len(self.x) / (time.perf_counter() - t0)


def bench(name, bc, args, device):
    set_seed(0)
    x = torch.randn(args.batch_size, args.sequencelength, args.input_dim, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    ours = get_model(name, args.input_dim, args.num_classes, args.sequencelength)
    runs = {"cropkit": Stepper(ours, list(ours.parameters()), x, y, device)}
    row = {"model": name, "params_cropkit": sum(p.numel() for p in ours.parameters())}
    if bc is not None:
        ref = reference_model(bc, name, args.input_dim, args.num_classes, args.sequencelength, device)
        params = all_parameters(ref)
        row["params_breizhcrops"] = sum(p.numel() for p in params)
        runs["breizhcrops"] = Stepper(ref, params, x, y, device)
    best = {k: 0.0 for k in runs}
    for _ in range(args.rounds):
        for k, r in runs.items(): best[k] = max(best[k], r.run(args.seconds))
    row |= {f"{k}_samples_per_s": round(v, 1) for k, v in best.items()}
    if "breizhcrops" in best: row["ratio"] = round(best["cropkit"] / best["breizhcrops"], 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registry names (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sequencelength", type=int, default=45)
    p.add_argument("--input-dim", type=int, default=13)
    p.add_argument("--num-classes", type=int, default=9)
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model, implementation and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best counts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="enable_nested_tensor")   # BreizhCrops' Transformers warn on construction
    device = get_device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    bc, stubbed = import_reference()
    if bc is None: print("breizhcrops is not importable: measuring cropkit only (pip install breizhcrops --no-deps)")
    elif stubbed: print(f"note: stubbed optional dependencies of the breizhcrops package: {', '.join(stubbed)}")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
          f"input ({args.sequencelength}, {args.input_dim}), {args.num_classes} classes; training step = forward + NLL + backward + Adam")
    rows, t0 = [], time.perf_counter()
    for name in args.models:
        row = bench(name, bc, args, device)
        rows.append(row)
        ref = f"{row['breizhcrops_samples_per_s']:>10.0f} samples/s  ratio {row['ratio']:.2f}" if "ratio" in row else "-"
        print(f"{name:<20} cropkit {row['cropkit_samples_per_s']:>10.0f} samples/s   breizhcrops {ref}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f: json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
