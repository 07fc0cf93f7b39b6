"""Loading speed: cropkit's packed loader against the per-sample h5 reader, on the same file, in one run.

    python benchmarks/bench_loading.py [--parcels 20000] [--batch-size 256] [--root DIR] [--seconds 15]

Builds a synthetic BreizhCrops-layout region (`cropkit.data.synthetic.make_breizhcrops`, L1C, T from 70 to
150) unless `--root` already holds one, then measures samples per second through a `DataLoader`
(same batch size, shuffled, main process) for

- the reference: a dataset that, like BreizhCrops, opens the h5 file on every `__getitem__`, reads the
  parcel's dataset, selects the 13 bands, draws 45 sorted time steps and scales by 1e-4;
- cropkit: `PackedSeries.from_h5` + `PackedParcels.loader`, one vectorised call per batch.

The one-time cache build and the cache load are timed and printed separately; the steady-state rate
excludes them. The ratio of the two steady-state rates is printed last.
"""
from __future__ import annotations
import argparse, tempfile, time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cropkit.data.breizhcrops import COLUMNS, DEFAULT_BANDS
from cropkit.data.packed import PackedParcels, PackedSeries, cache_paths
from cropkit.data.synthetic import make_breizhcrops

LEVEL, REGION, YEAR, STEPS = "L1C", "frh01", 2017, 45


class H5PerSample(Dataset):
    "The reference: open the h5 file on every item, read one parcel, select bands, sample 45 steps, scale."
    def __init__(self, h5_path, keys, labels, ids):
        self.h5_path, self.keys, self.labels, self.ids = h5_path, list(keys), labels, ids
        self.cols = [COLUMNS[LEVEL].index(b) for b in DEFAULT_BANDS[LEVEL]]

    def __len__(self): return len(self.keys)

    def __getitem__(self, i):
        with h5py.File(self.h5_path, "r") as f: x = f[self.keys[i]][()]
        t = np.sort(np.random.choice(len(x), STEPS, replace=len(x) < STEPS))
        X = torch.from_numpy((x[t][:, self.cols] * 1e-4).astype(np.float32))
        return X, torch.tensor(self.labels[i]), int(self.ids[i])


def samples_per_second(loader: DataLoader, seconds: float, max_epochs: int = 1000) -> tuple[float, int]:
    "Iterate `loader` for about `seconds` (whole batches); return (samples/s, samples seen)."
    n, t0 = 0, time.perf_counter()
    for _ in range(max_epochs):
        for X, y, ids in loader:
            n += len(y)
            if time.perf_counter() - t0 >= seconds: return n / (time.perf_counter() - t0), n
    return n / (time.perf_counter() - t0), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring time per loader")
    ap.add_argument("--root", type=Path, default=None, help="folder for the synthetic data (default: a temporary one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0); np.random.seed(0)

    if args.root is not None: return run(args, args.root)
    with tempfile.TemporaryDirectory(prefix="cropkit-bench-") as tmp:   # removed afterwards (~450 MB)
        return run(args, Path(tmp))


def run(args, root: Path):
    "Generate the data under `root` if needed, measure both loaders, print the rates and their ratio."
    h5_path, index_path = root / str(YEAR) / LEVEL / f"{REGION}.h5", root / str(YEAR) / LEVEL / f"{REGION}.csv"
    if not h5_path.exists():
        t0 = time.perf_counter()
        make_breizhcrops(root, regions=(REGION,), year=YEAR, level=LEVEL, n_parcels=args.parcels,
                         min_length=70, max_length=150, seed=0)
        print(f"synthetic data: {args.parcels} parcels written in {time.perf_counter() - t0:.1f} s")
    index = pd.read_csv(index_path)
    index = index[index["classid"].notna()]
    keys, labels, ids = index["path"].tolist(), index["classid"].to_numpy(np.int64), index["id"].to_numpy(np.int64)
    lengths = index["sequencelength"].to_numpy()
    print(f"file: {h5_path} ({h5_path.stat().st_size / 2**20:.0f} MiB), {len(keys)} labelled parcels, "
          f"T {lengths.min()}..{lengths.max()} (mean {lengths.mean():.0f}), batch size {args.batch_size}, "
          f"{STEPS} steps × {len(DEFAULT_BANDS[LEVEL])} bands")

    ref = DataLoader(H5PerSample(h5_path, keys, labels, ids), batch_size=args.batch_size, shuffle=True)
    ref_rate, ref_n = samples_per_second(ref, args.seconds)
    print(f"per-sample h5 reader (BreizhCrops way): {ref_rate:10,.0f} samples/s  ({ref_n} samples)")

    for p in cache_paths(h5_path).values(): p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    PackedSeries.from_h5(h5_path, keys, COLUMNS[LEVEL])
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = PackedSeries.from_h5(h5_path, keys, COLUMNS[LEVEL])
    t_load = time.perf_counter() - t0
    print(f"packed cache: built once in {t_build:.1f} s ({packed.values.nbytes / 2**20:.0f} MiB), "
          f"loaded from the cache in {t_load:.2f} s")
    ds = PackedParcels(packed, labels, ids, bands=DEFAULT_BANDS[LEVEL], sequencelength=STEPS)
    fast_rate, fast_n = samples_per_second(ds.loader(batch_size=args.batch_size, shuffle=True), args.seconds)
    print(f"cropkit packed loader:                 {fast_rate:10,.0f} samples/s  ({fast_n} samples)")
    epoch_ref, epoch_fast = len(keys) / ref_rate, len(keys) / fast_rate
    print(f"one epoch of {len(keys)} parcels: {epoch_ref:.1f} s -> {epoch_fast:.2f} s "
          f"(cropkit including the one-time build: {epoch_fast + t_build:.1f} s)")
    print(f"speed-up (steady state): {fast_rate / ref_rate:.1f}x")
    return fast_rate / ref_rate


if __name__ == "__main__":
    main()
