"""`benchmarks/bench_extract.py` runs end to end on a small cube, and its register layer tiles the subset."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("exactextract", reason="the geo extra is not installed")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_extract  # noqa: E402


def test_fields_tile_the_bounds_with_the_rpg_mean_area():
    bounds = (500000, 5000000, 505000, 5004000)
    mean = bench_extract.rpg_mean_area_m2()
    assert 1.9e4 < mean < 2.1e4                       # the real RPG sample's parcels average 1.98 ha
    g = bench_extract.fields(bounds, mean, seed=3)
    assert abs(g.area.sum() - 5000 * 4000) < 1        # no gaps ...
    assert g.union_all().area == pytest.approx(5000 * 4000)   # ... and no overlaps
    assert g.geometry.is_valid.all() and g.id.is_unique
    assert len(g) == round(5000 * 4000 / mean)


def test_benchmark_runs_both_layers_and_the_whole_cube():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_extract.py"), "--dates", "3", "--bands", "2",
                        "--size", "1024", "--chunk", "256", "--parcels", "400", "--subset", "256", "--naive-parcels", "20",
                        "--fields", "--repeat", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "written as a tiled GeoTIFF (deflate" in r.stdout and "GDAL cache for the scene's share" in r.stdout
    lines = [l for l in r.stdout.splitlines() if l.startswith("subset") and " layer of " in l]
    assert [l.split(",")[1].split()[0] for l in lines] == ["sparse", "fields"]
    for line in lines:                                # cropkit and rasterio.mask agree up to edge pixels
        assert float(line.split("max |difference| of means ")[1].split(":")[0]) < 200
        assert line.count("-> ratio") == 2            # against the default cache and against the scene's share
    whole = [l for l in r.stdout.splitlines() if l.startswith("whole cube")]
    assert len(whole) == 1 and "400 parcels in" in whole[0] and "peak RSS" in whole[0]
