"""Parcel extraction at scale: `cropkit.geo.extract.extract_parcels` on a seeded synthetic cube that is never
materialised (a lazy dask array, generated chunk by chunk), against a naive per-polygon `rasterio.mask` loop
measured in the same run on a subset written to a GeoTIFF.

    OMP_NUM_THREADS=1 python benchmarks/bench_extract.py --dates 24 --bands 10 --size 20000 --parcels 100000

prints parcels/s and peak RSS (this process and its children: dask workers with --cluster) on the whole cube, then
parcels/s of both on the same subset and their ratio, for a sparse layer (the whole cube's density: 1 % of the pixels
in parcels) and, with --fields, a register of fields that tile the subset. The issue's goal: >= 10x the naive loop,
peak RSS <= 4 GB.

The subset is a tiled, compressed GeoTIFF (DEFLATE by default, --compress) and small enough that GDAL's block cache
holds all of it, so the naive loop decodes each tile once however its parcels are ordered. On the whole scene it could
not: the cache holds 5 % of the RAM, a small share of the cube, and parcels in register order rarely find the tiles of
the parcel before them still cached, so each parcel decodes every tile it touches. The naive loop is therefore timed
twice: with GDAL's default cache, and with the cache cut to the share of the subset that the default cache would
hold of the whole cube (on a sample of --naive-parcels parcels of each layer, in their order).
"""
import argparse, os, tempfile, threading, time
from pathlib import Path

import numpy as np


def synthetic_cube(dates, bands, size, chunk, seed=0):
    "A lazy (time, band, y, x) float32 cube in UTM 31N, 10 m pixels; each chunk is generated from its block id."
    import dask.array as da
    from cropkit.geo.cube import make_cube, pixel_centres

    def block(block_id=None, block_info=None):
        shape = block_info[None]["chunk-shape"]
        t, _, i, j = block_id
        rng = np.random.default_rng([seed, t, i, j])
        base = rng.random(shape[2:], dtype=np.float32) * 1000
        out = np.empty(shape, np.float32)
        for b in range(shape[1]): out[0, b] = base + 100 * b + 10 * t
        return out

    arr = da.map_blocks(block, dtype=np.float32, chunks=((1,) * dates, (bands,), *[(chunk,) * (size // chunk) + ((size % chunk,) if size % chunk else ())] * 2))
    x, y = pixel_centres((500000, 5000000, 500000 + 10 * size, 5000000 + 10 * size), (size, size))
    return make_cube(arr, np.datetime64("2021-01-01") + np.arange(dates) * np.timedelta64(15, "D"), [f"B{k + 1}" for k in range(bands)],
                     x, y, "EPSG:32631", chunks=None)


def parcels(n, size, seed=0, bounds=None):
    "n random axis-aligned rectangles of 20-120 m sides scattered inside the cube (or `bounds`): a sparse layer."
    import geopandas as gpd, shapely
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = bounds or (500000, 5000000, 500000 + 10 * size, 5000000 + 10 * size)
    w, h = rng.uniform(20, 120, n), rng.uniform(20, 120, n)
    cx, cy = rng.uniform(x0 + 60, x1 - 60, n), rng.uniform(y0 + 60, y1 - 60, n)
    return gpd.GeoDataFrame({"id": np.arange(n), "CODE_CULTU": "BTH"}, geometry=shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), crs="EPSG:32631")


def rpg_mean_area_m2() -> float:
    "Mean area (m²) of the 100 real French RPG 2022 parcels in data/rpg_parcels (1.98 ha)."
    import geopandas as gpd
    rpg = gpd.read_file(Path(__file__).parents[1] / "data" / "rpg_parcels" / "rpg2022_fiboa_sample_wgs84.geojson")
    return float(rpg.to_crs(2154).area.mean())


def fields(bounds, mean_area, seed=0):
    "A parcel register that tiles `bounds`: Voronoi fields of random seeds, `mean_area` m² on average, clipped to it."
    import geopandas as gpd, shapely
    x0, y0, x1, y1 = bounds
    n = max(1, round((x1 - x0) * (y1 - y0) / mean_area))
    rng = np.random.default_rng(seed)
    pts = shapely.multipoints(np.c_[rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)])
    box = shapely.box(*bounds)
    cells = shapely.intersection(shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=box)), box)
    cells = cells[shapely.area(cells) > 0]
    return gpd.GeoDataFrame({"id": np.arange(len(cells)), "CODE_CULTU": "BTH"}, geometry=cells, crs="EPSG:32631")


def best_of(k, fn):
    "(smallest wall time of k calls of fn, its last result): the first call pays imports, thread pools and caches."
    best = float("inf")
    for _ in range(k):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out


# glibc serves allocations above MALLOC_MMAP_THRESHOLD_ (at most 32 MB by default) with fresh pages from the kernel,
# and dask's nanny sets MALLOC_TRIM_THRESHOLD_ to 64 kB so that workers hand freed memory back at once: every 40 MB
# chunk is then page-faulted in again, which made the workers spend more time in the kernel than in numpy. Raising
# both thresholds lets a worker reuse its freed chunks (on a 6144² cube: 40 s -> 17 s, peak RSS 1.44 -> 1.58 GB).
WORKER_MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 2 ** 30,
                 "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 2 ** 30}


def generation_seconds(cube, sample: int = 40) -> float:
    "Seconds one thread takes to generate the whole synthetic cube, extrapolated from `sample` of its chunks."
    blocks = cube.data.to_delayed().ravel()
    picks = np.random.default_rng(0).choice(len(blocks), min(sample, len(blocks)), replace=False)
    t0 = time.perf_counter()
    for k in picks: blocks[k].compute(scheduler="sync")
    return (time.perf_counter() - t0) / len(picks) * len(blocks)


class PeakRSS:
    "Peak resident memory of this process plus its children, sampled every 0.1 s."
    def __init__(self):
        import psutil
        self.p, self.peak, self.stop = psutil.Process(), 0, False
    def _run(self):
        while not self.stop:
            try: rss = self.p.memory_info().rss + sum(c.memory_info().rss for c in self.p.children(recursive=True))
            except Exception: rss = 0
            self.peak = max(self.peak, rss); time.sleep(0.1)
    def __enter__(self): self.t = threading.Thread(target=self._run, daemon=True); self.t.start(); return self
    def __exit__(self, *a): self.stop = True; self.t.join()


def cube_from_tif(tif, like, chunk: int = 512):
    "The (time, band, y, x) cube read lazily from the subset GeoTIFF (layers time-major, as written), on `like`'s grid."
    import rioxarray
    from cropkit.geo.cube import make_cube
    T, B = like.sizes["time"], like.sizes["band"]
    layers = rioxarray.open_rasterio(tif, chunks={"band": -1, "y": chunk, "x": chunk}, lock=False)   # as open_images reads
    data = layers.data.reshape(T, B, layers.sizes["y"], layers.sizes["x"])
    return make_cube(data, like.time.values, list(like.band.values), like.x.values, like.y.values, like.rio.crs, chunks=None)


def scene_cache_bytes(subset_bytes: int, cube_bytes: int) -> int:
    "GDAL's default block cache (5 % of the physical RAM) scaled by the subset's share of the whole cube."
    import psutil
    return max(1 << 20, int(0.05 * psutil.virtual_memory().total * subset_bytes / cube_bytes))


def naive(tif, gdf):
    "Per-polygon rasterio.mask over all layers: the reference loop."
    import rasterio, rasterio.mask
    out = []
    with rasterio.open(tif) as src:
        for geom in gdf.geometry:
            a, _ = rasterio.mask.mask(src, [geom], crop=True, filled=False)
            out.append(a.reshape(a.shape[0], -1).mean(axis=1).filled(np.nan))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dates", type=int, default=24); ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--size", type=int, default=20000, help="cube width and height in pixels")
    ap.add_argument("--chunk", type=int, default=1024); ap.add_argument("--parcels", type=int, default=100000)
    ap.add_argument("--subset", type=int, default=1024, help="side (pixels) of the subset written for the naive loop")
    ap.add_argument("--naive-parcels", type=int, default=300, help="parcels of the sparse subset layer (300: the density of "
                    "100 000 parcels on 20 000² px)")
    ap.add_argument("--fields", action="store_true", help="also compare on a parcel register that tiles the subset "
                    "(Voronoi fields with the mean area of the real RPG parcels in data/rpg_parcels)")
    ap.add_argument("--compress", choices=["deflate", "zstd", "none"], default="deflate",
                    help="compression of the subset GeoTIFF (float predictor), as COGs are compressed")
    ap.add_argument("--repeat", type=int, default=2, help="time each side this many times and keep the fastest")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster", action="store_true", help="run through a dask.distributed LocalCluster (processes)")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings of the dask workers "
                    "as distributed sets them (see WORKER_MALLOC)")
    ap.add_argument("--subset-only", action="store_true", help="only the same-subset comparison, not the whole cube")
    args = ap.parse_args()
    import rasterio
    from cropkit.geo.extract import extract_parcels

    cube = synthetic_cube(args.dates, args.bands, args.size, args.chunk)
    gb = cube.size * 4 / 1e9
    print(f"cube {dict(cube.sizes)} float32 = {gb:.1f} GB (lazy), chunks {args.chunk}px; {args.parcels} parcels; workers {args.workers}")

    if not args.subset_only:
        # --- the whole cube first: the subset's arrays and GDAL's block cache must not count in its peak RSS ---
        gdf = parcels(args.parcels, args.size, seed=0)
        client = None
        if args.cluster:
            import dask
            from dask.distributed import Client, LocalCluster
            if not args.default_malloc: dask.config.set(WORKER_MALLOC)
            client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit="1.5GB", processes=True))
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            ds = extract_parcels(cube, gdf, "id", workers=None if client else args.workers)
            t_all = time.perf_counter() - t0
        if client is not None: client.close()
        rate = len(ds.parcel) / t_all
        t_gen = generation_seconds(cube)
        print(f"whole cube: {len(ds.parcel)} parcels in {t_all:.1f} s = {rate:.0f} parcels/s ({gb / t_all:.2f} GB of cube/s); "
              f"peak RSS {mem.peak / 1e9:.2f} GB; generating the cube alone takes about {t_gen:.0f} s on one thread "
              f"(timed on a sample of its chunks)")

    # --- the same subset both ways: a GeoTIFF of the top-left corner for the naive loop ------------------------
    s = min(args.subset, args.size)
    sub = cube.isel(y=slice(0, s), x=slice(0, s))
    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "subset.tif"
        T, B = sub.sizes["time"], sub.sizes["band"]
        codec = {} if args.compress == "none" else {"compress": args.compress, "predictor": 3}
        with rasterio.open(tif, "w", driver="GTiff", height=s, width=s, count=T * B, dtype="float32", crs=sub.rio.crs,
                           transform=sub.rio.transform(), tiled=True, blockxsize=256, blockysize=256, interleave="band",
                           **codec) as dst:            # band-interleaved, as stacks of single-band COGs are stored
            for t in range(T):                         # one date at a time: the subset is never held whole
                dst.write(sub.isel(time=t).values, indexes=list(range(t * B + 1, (t + 1) * B + 1)))
        cache = scene_cache_bytes(sub.size * 4, cube.size * 4)
        os.sync()                                      # the file's write-back must not run during the timings
        print(f"subset {s}x{s}px written as a tiled GeoTIFF ({args.compress}, {os.path.getsize(tif) / 1e9:.2f} GB); "
              f"GDAL cache for the scene's share: {cache / 1e6:.1f} MB")
        layers = {"sparse": parcels(args.naive_parcels, s, seed=1, bounds=sub.rio.bounds())}
        if args.fields: layers["fields"] = fields(sub.rio.bounds(), rpg_mean_area_m2(), seed=1)
        for name, small in layers.items():
            compare(name, small, tif, sub, cache, args)


def compare(name, small, tif, sub, cache, args):
    "Time cropkit and the naive loop (GDAL's default cache, then the scene's share of it) on one parcel layer."
    import rasterio
    from cropkit.geo.extract import extract_parcels
    s, n = sub.sizes["x"], len(small)
    t_naive, ref = best_of(args.repeat, lambda: naive(tif, small))
    t_ours, ours = best_of(args.repeat, lambda: extract_parcels(cube_from_tif(tif, sub), small, "id", workers=args.workers))
    diff = np.nanmax(np.abs(ours["mean"].values.reshape(n, -1) - ref))
    sample = small.iloc[:args.naive_parcels]
    with rasterio.Env(GDAL_CACHEMAX=cache):
        t_scene, _ = best_of(args.repeat, lambda: naive(tif, sample))
    naive_scene = len(sample) / t_scene
    print(f"subset {s}x{s}px, {name} layer of {n} parcels covering {small.area.sum() / (s * s * 100):.0%} of it, best of "
          f"{args.repeat}: cropkit {n / t_ours:.1f} parcels/s ({t_ours:.2f} s); naive rasterio.mask with GDAL's default "
          f"cache {n / t_naive:.1f} parcels/s ({t_naive:.2f} s) -> ratio {t_naive / t_ours:.1f}x; with the scene's share "
          f"of it {naive_scene:.1f} parcels/s ({len(sample)} parcels in {t_scene:.2f} s) -> ratio "
          f"{n / t_ours / naive_scene:.1f}x (max |difference| of means {diff:.3g}: rasterio.mask counts whole pixels by "
          f"centre, cropkit weighs them by coverage)")


if __name__ == "__main__":
    main()
