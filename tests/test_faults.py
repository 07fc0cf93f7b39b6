"""Fault injection: a training process killed with SIGKILL (no clean-up, no `finally`) at random points of training,
in the middle of a checkpoint write, or while the CLI writes its results, then resumed, ends with exactly the
weights of the uninterrupted run; nothing half-written is ever read back, and stale `.part` files are removed.

The child process is a small script (below) that trains a toy parcel classifier with `cropkit.train.Learner`. Faults:
- `time:<seconds>`: the parent sends SIGKILL after a random delay (seeded), anywhere in start-up, training or writing;
- `write:<k>`: the child kills itself half-way through its k-th checkpoint write (the temporary file holds half the bytes);
- `step:<k>`: the child kills itself in its k-th training step.
"""
import os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from cropkit.train.engine import LAST_FILE, read_checkpoint

CHILD = textwrap.dedent('''
    import os, signal, sys
    import numpy as np, torch
    from torch import nn
    from torch.utils.data import Dataset
    import cropkit.train.engine as engine
    from cropkit.train import Learner

    class Toy(Dataset):
        def __init__(self, n, seed):
            g = np.random.default_rng(seed); c = np.random.default_rng(7).normal(size=(3, 4, 3))
            self.y = g.integers(0, 3, n); self.X = (c[self.y] + 0.5 * g.normal(size=(n, 4, 3))).astype(np.float32)
            self.classes, self.num_classes, self.bands, self.sequencelength = ["a", "b", "c"], 3, ["B0", "B1", "B2"], 4
        def __len__(self): return len(self.y)
        def __getitem__(self, i):
            return torch.from_numpy(self.X[i] + 0.05 * np.random.randn(4, 3).astype(np.float32)), torch.tensor(int(self.y[i])), i

    fault, logdir, start = sys.argv[1], sys.argv[2], sys.argv[3]
    kind, _, at = fault.partition(":")
    counter = {"write": 0, "step": 0}
    if kind == "write":
        real = engine.atomic_write
        import contextlib
        @contextlib.contextmanager
        def dying_write(path, mode="wb"):
            with real(path, mode) as f:
                yield f
                counter["write"] += str(path).endswith(".pt")
                if counter["write"] == int(at) and str(path).endswith(".pt"):
                    f.flush(); f.truncate(max(1, f.tell() // 2)); os.fsync(f.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
        engine.atomic_write = dying_write
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    class Killer(nn.Module):          # the same network in every run; it kills its process in step `at` of a step fault
        def __init__(self, net): super().__init__(); self.net = net
        def forward(self, x):
            if self.training and kind == "step":
                counter["step"] += 1
                if counter["step"] == int(at): os.kill(os.getpid(), signal.SIGKILL)
            return self.net(x)
    model = Killer(model)
    lrn = Learner(model, Toy(40, 0), Toy(16, 1), lr=0.02, batch_size=8, scheduler="cosine", logdir=logdir,
                  progress=False, seed=5, overwrite=start == "overwrite")
    lrn.fit(6, resume=start == "resume")
''')


def _run(tmp_path, fault, logdir, start="fresh", kill_after=None):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    p = subprocess.Popen([sys.executable, str(script), fault, str(logdir), start],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if kill_after is not None:
        try: p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired: p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    return p.returncode, err.decode()


def _weights(logdir):
    return read_checkpoint(Path(logdir) / LAST_FILE)["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    t0 = time.perf_counter()
    code, err = _run(d, "none", d / "full")
    assert code == 0, err
    return _weights(d / "full"), time.perf_counter() - t0


def _resume_until_done(tmp_path, logdir):
    for _ in range(3):          # a kill before the first checkpoint leaves nothing to resume: replace that run
        start = "resume" if (Path(logdir) / LAST_FILE).exists() else "overwrite"
        code, err = _run(tmp_path, "none", logdir, start=start)
        if code == 0: return
    raise AssertionError(f"resume did not finish: {err}")


FAULTS = [f"write:{k}" for k in (1, 2, 5, 8)] + [f"step:{k}" for k in (3, 12, 21)]


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_in_a_checkpoint_write_or_a_step_then_resume(reference, tmp_path, fault):
    weights, _ = reference
    logdir = tmp_path / "run"
    code, err = _run(tmp_path, fault, logdir)
    assert code == -signal.SIGKILL, err
    if (logdir / LAST_FILE).exists(): read_checkpoint(logdir / LAST_FILE)     # what is there is whole and verified
    _resume_until_done(tmp_path, logdir)
    assert not list(logdir.glob(".*.part")), "stale temporary files were left"
    got = _weights(logdir)
    assert all(torch.equal(got[k], v) for k, v in weights.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_a_random_time_then_resume(reference, tmp_path, seed):
    weights, seconds = reference
    delay = random.Random(seed).uniform(0.3 * seconds, 0.8 * seconds)
    logdir = tmp_path / "run"
    code, err = _run(tmp_path, "none", logdir, kill_after=delay)
    assert code == -signal.SIGKILL, err                  # really killed, not finished
    _resume_until_done(tmp_path, logdir)
    got = _weights(logdir)
    assert all(torch.equal(got[k], v) for k, v in weights.items())


# --- H2Crop: the same guarantee through `cropkit h2crop train` --------------------------------------------------

H2_ARGS = ["--epochs", "3", "--batch-size", "1", "--device", "cpu", "--quiet", "--set", "img_size=48", "--set", "enmap_size=16"]


def _h2crop(root, work, *extra, kill_after=None):
    import shutil
    exe = shutil.which("cropkit", path=str(Path(sys.executable).parent)) or shutil.which("cropkit")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([exe, "h2crop", "train", "tiny", "--root", str(root), "--work-dir", str(work), *H2_ARGS, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if kill_after is not None:
        try: p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired: p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=600)
    return p.returncode, err.decode()


@pytest.fixture(scope="module")
def h2crop_reference(tmp_path_factory):
    from cropkit.data.h2crop_synthetic import make_h2crop
    d = tmp_path_factory.mktemp("h2faults")
    root = make_h2crop(d / "data", n_train=2, n_val=1, n_test=1, size=48, seed=1)
    t0 = time.perf_counter()
    code, err = _h2crop(root, d / "full")
    assert code == 0, err
    return root, _weights(d / "full"), time.perf_counter() - t0


@pytest.mark.parametrize("seed", [0, 1])
def test_h2crop_kill_at_a_random_time_then_resume(h2crop_reference, tmp_path, seed):
    root, weights, seconds = h2crop_reference
    work = tmp_path / "run"
    code, err = _h2crop(root, work, kill_after=random.Random(100 + seed).uniform(0.4 * seconds, 0.8 * seconds))
    assert code == -signal.SIGKILL, err                  # really killed, not finished
    for _ in range(3):
        if code == 0: break
        code, err = _h2crop(root, work, "--resume" if (work / LAST_FILE).exists() else "--overwrite")
    assert code == 0, err
    assert not list(work.glob(".*.part"))
    got = _weights(work)
    assert all(torch.equal(got[k], v) for k, v in weights.items())
