"""The README's tour runs as written (with one epoch instead of thirty, and a generated BreizhCrops region
standing in for the real download)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_tour_runs(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 4, "the README tour lost its code blocks"
    monkeypatch.chdir(tmp_path)
    # the map products the "Looking at results" block shows come from the README's main job: run it first, as written
    import shlex
    from cropkit.cli import main
    job = re.search(r"&& (cropkit workflow [^\n]*)", (ROOT / "README.md").read_text()).group(1)
    (tmp_path / "data").symlink_to(ROOT / "data")
    assert main(shlex.split(job)[1:] + ["--quiet"]) == 0
    from cropkit.data.synthetic import make_breizhcrops
    namespace = {}
    for block in blocks:
        code = block.replace("epochs=30", "epochs=1").replace("epochs=10,", "epochs=1,").replace("n_parcels=200", "n_parcels=60")
        code = code.replace('learner = fit(model, train, test,', 'learner = fit(model, train, test, progress=False,')
        exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["X"].shape) == (45, 13)           # the BreizhCrops item of the tour
    assert len(namespace["learner"].history) == 1
    assert 0.0 <= namespace["scores"].score <= 1.0                # mean mFscore over the four levels
    assert (tmp_path / "runs" / "h2crop-tiny" / "best.pt").exists()
    assert (tmp_path / "runs" / "tempcnn" / "history.csv").exists()
    assert (tmp_path / "runs" / "tempcnn" / "best.pt").exists()              # validation split from the training series
    assert not (tmp_path / "h2crop_demo").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs"]   # outputs under runs/
    assert type(namespace["view"]).__name__ == "Layout" and "folium" in type(namespace["m"]).__module__
