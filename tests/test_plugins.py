"""Extension points: a model and a dataset written outside cropkit, registered with `register_model` /
`register_dataset` in a plugin module, are used by name from the command line in a fresh process, found through an
installed package's entry point or through CROPKIT_PLUGINS, without editing cropkit."""
import os, subprocess, sys, textwrap

import pytest

PLUGIN = textwrap.dedent('''
    import numpy as np
    from torch import nn
    from cropkit.models import register_model
    from cropkit.data import register_dataset, SeriesDataset

    @register_model(aliases=["mean-net"])
    class MeanNet(nn.Module):
        "Mean over time, then a small MLP."
        def __init__(self, input_dim, num_classes, hidden: int = 16):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        def forward(self, x): return self.net(x.mean(1))

    @register_dataset(name="stripes")
    def stripes(root=None, mode=None, seed=0):
        g = np.random.default_rng(seed)
        def make(n):
            y = np.arange(n) % 2
            X = (0.2 + 0.02 * g.normal(size=(n, 8, 3)) + 0.1 * y[:, None, None]).astype(np.float32)
            return SeriesDataset(X, ["B2", "B3", "B4"], y, ["bare", "crop"])
        return {"train": make(80), "valid": None, "test": make(40)}
''')


def cropkit(args, env_extra, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    code = "import sys; from cropkit.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "my_crops_plugin.py").write_text(PLUGIN)
    return tmp_path


def test_entry_point_plugin(plugin_dir, tmp_path):
    "An installed package (its dist-info on the path) declares the plugin module in the cropkit.plugins group."
    info = plugin_dir / "my_crops_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-crops-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cropkit.plugins]\nmy_crops = my_crops_plugin\n")
    env = {"PYTHONPATH": str(plugin_dir)}
    r = cropkit(["train", "mean-net", "--dataset", "stripes", "--epochs", "30", "--logdir", tmp_path / "run", "--device", "cpu",
                 "-q"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MeanNet on stripes (default)" in r.stdout, r.stdout
    acc = float(r.stdout.split("accuracy ")[1].split()[0].rstrip(","))
    assert acc > 0.9, r.stdout
    r = cropkit(["predict", tmp_path / "run" / "last.pt", "--dataset", "stripes", "--out", tmp_path / "p.csv"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MeanNet: 40 series of stripes default test predicted" in r.stdout


def test_env_plugin_and_broken_plugin(plugin_dir, tmp_path):
    env = {"PYTHONPATH": str(plugin_dir), "CROPKIT_PLUGINS": "my_crops_plugin"}
    r = cropkit(["train", "MeanNet", "--dataset", "stripes", "--epochs", "1", "--logdir", tmp_path / "run", "-q"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    r = cropkit(["train", "MeanNet", "--dataset", "stripes", "--epochs", "1", "--logdir", tmp_path / "run2", "-q"],
                {"CROPKIT_PLUGINS": "not_installed_plugin"}, tmp_path)
    assert r.returncode == 2 and "CROPKIT_PLUGINS module 'not_installed_plugin' failed to import" in r.stderr
    assert "Traceback" not in r.stderr
    r = cropkit(["train", "MeanNet", "--epochs", "1", "-q"], {}, tmp_path)     # no plugin: the name is unknown
    assert r.returncode == 2 and "unknown model 'MeanNet'" in r.stderr
    assert not (tmp_path / "runs").exists()
