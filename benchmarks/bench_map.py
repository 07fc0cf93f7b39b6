"""Whole-scene mapping speed: `cropkit.geo.classify.map_cube` (what `cropkit map` runs) on a seeded synthetic cube that is
never materialised, for TempCNN (the Victoria recipe's size) and the random forest, against two references measured in
the same run on pixels of the same cube:

- a naive loop that calls the model once per pixel (`--naive-pixels` of them);
- one batched call of the model on `--batch-pixels` pixels already in memory: the model's own throughput, which reading
  the cube and writing the COGs should not spoil (goal: map within 2x of it).

    OMP_NUM_THREADS=1 python benchmarks/bench_map.py --size 5000 --dates 24 --bands 10

prints pixels/s of each, the ratios, and the peak RSS of the process (goal: independent of the scene size).
"""
import argparse, resource, sys, tempfile, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import synthetic_cube  # noqa: E402


def training_set(cube, n=2048, classes=4, seed=0):
    "Pixel series of the cube's first chunk with synthetic labels (speed only: the labels carry no meaning)."
    from cropkit.data.series import SeriesDataset
    block = cube.isel(y=slice(0, 64), x=slice(0, 64)).values * np.float32(1e-4)
    T, D = block.shape[:2]
    X = block.reshape(T, D, -1).transpose(2, 0, 1)[:n]
    y = np.random.default_rng(seed).integers(0, classes, len(X))
    return SeriesDataset(X, [str(b) for b in cube.band.values], y, [f"crop{k}" for k in range(classes)])


def make_predictor(name, data, folder, device):
    from cropkit.train.inference import load_predictor
    if name == "RandomForest":
        from cropkit.train.baselines import RandomForestBaseline
        RandomForestBaseline(n_estimators=100, seed=0, n_jobs=1).fit(data).save(folder / "rf.skops")
        return load_predictor(folder / "rf.skops")
    from cropkit.train.recipes import get_recipe, train_recipe
    import dataclasses
    recipe = dataclasses.replace(get_recipe("victoria", name), epochs=1)
    train_recipe(recipe, data, logdir=folder / name, device=device, seed=0)
    return load_predictor(folder / name / "last.pt", device)


def pixels(cube, n, seed=0):
    "n pixel series (N, T, D) of the cube, in reflectance."
    rows = cube.isel(y=slice(0, 256), x=slice(0, 256)).values * np.float32(1e-4)
    T, D = rows.shape[:2]
    flat = rows.reshape(T, D, -1).transpose(2, 0, 1)
    return np.ascontiguousarray(flat[np.random.default_rng(seed).choice(len(flat), min(n, len(flat)), replace=False)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="scene side in pixels (the issue asks for >= 5000)")
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=256, help="spatial chunk side (cropkit map opens imagery with 256 for 24 x 10)")
    ap.add_argument("--models", nargs="+", default=["TempCNN", "RandomForest"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive-pixels", type=int, default=500)
    ap.add_argument("--batch-pixels", type=int, default=16384)
    args = ap.parse_args()
    from cropkit.geo.classify import map_cube
    cube = synthetic_cube(args.dates, args.bands, args.size, args.chunk)
    print(f"scene {args.size} x {args.size} px x {args.dates} dates x {args.bands} bands, chunks {args.chunk}, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = training_set(cube)
        for name in args.models:
            p = make_predictor(name, data, tmp, args.device)
            t0 = time.perf_counter()
            map_cube(p, cube, tmp / f"{name}.tif")
            secs = time.perf_counter() - t0
            rate = args.size ** 2 / secs
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2      # after the map, before the references
            x = pixels(cube, max(args.batch_pixels, args.naive_pixels))
            t0 = time.perf_counter()
            for i in range(args.naive_pixels): p.predict_proba(x[i:i + 1])
            naive = args.naive_pixels / (time.perf_counter() - t0)
            p.predict_proba(x[:1024])                                        # warm-up
            t0 = time.perf_counter()
            p.predict_proba(x[:args.batch_pixels], batch_size=args.batch_pixels)
            batched = min(args.batch_pixels, len(x)) / (time.perf_counter() - t0)
            print(f"{name:12s} map {rate:12,.0f} px/s ({secs:.1f} s) | one batched call {batched:12,.0f} px/s | naive loop "
                  f"{naive:9,.0f} px/s | map / batched {rate / batched:.2f} | map / naive {rate / naive:.0f}x | peak RSS after the map {rss:.2f} GB")


if __name__ == "__main__":
    main()
