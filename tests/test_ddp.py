"""DistributedDataParallel equivalence on the CPU: `torchrun` with 2 Gloo processes × batch 1 must train the `tiny`
configuration exactly like 1 process × batch 2 on the same data (same global batches, gradients averaged over the
processes, BatchNorm statistics synchronised across them) and report identical validation scores.

What makes the comparison exact, and why:
- the same global batches: the engine's `SeededSampler` cuts one (seed, epoch) permutation into interleaved shards,
  so step k sees tiles {2k, 2k+1} of the permutation in both runs; 4 training tiles, so no padding is needed;
- BatchNorm: per-process statistics over 1 tile would differ from those over the 2-tile batch, so the trainer
  converts BatchNorm to a synchronised version under DDP (the engine's `GlooSyncBatchNormPlugin` on the CPU, a
  Lightning `LayerSync`); the slow test below
  (CROPKIT_SLOW_TESTS=1) shows that without it the weights do differ;
- randomness per process (flips, CutMix, stochastic depth) draws different numbers than one process would, so it
  is turned off here (`--no-augment --cutmix 0 --set drop_path=0.0`);
- SGD rather than AdamW: Adam divides each gradient by its own running magnitude, which blows float round-off up to
  the size of the learning rate for parameters whose gradient is mathematically zero (conv biases in front of
  BatchNorm) and is blind to a gradient that is summed instead of averaged; SGD keeps the runs within 1e-6;
- 3 validation tiles, so the two processes score different numbers of tiles (2 and 1): `SeededSampler` must count
  each tile exactly once (evaluation shards are not padded) and torchmetrics sums the confusion matrices over
  the processes.
"""
import json, os, socket, subprocess, sys

import numpy as np
import pandas as pd
import pytest
import torch

from cropkit.core import set_seed
from cropkit.data.h2crop_synthetic import make_h2crop
from cropkit.train.h2crop import main
from cropkit.models.h2crop import build_model
from cropkit.models.h2crop_swin import load_checkpoint_file

OVERRIDES = dict(img_size=48, enmap_size=16, drop_path=0.0)
SET = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(root, work, batch_size, *extra):
    return ["train", "tiny", "--root", str(root), "--work-dir", str(work), "--epochs", "1", "--batch-size", str(batch_size),
            "--device", "cpu", "--no-augment", "--cutmix", "0", "--optimizer", "sgd", "--lr", "0.05", "--quiet", *SET, *extra]


def _torchrun(args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "cropkit.train.h2crop", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("CROPKIT_DEVICE", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _weights(path):
    return load_checkpoint_file(path)["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_h2crop(tmp / "data", n_train=4, n_val=3, n_test=1, size=48, seed=3)
    assert main(_train_args(root, tmp / "single", 2)) == 0
    _torchrun(_train_args(root, tmp / "ddp", 1))
    return root, tmp


def test_two_gloo_processes_train_like_one_with_twice_the_batch(runs):
    root, tmp = runs
    single, ddp = _weights(tmp / "single" / "last.pt"), _weights(tmp / "ddp" / "last.pt")
    assert single.keys() == ddp.keys()
    set_seed(0)
    initial = build_model("tiny", **OVERRIDES).state_dict()
    moved = max(float((single[k] - initial[k]).abs().max()) for k in single if single[k].is_floating_point())
    assert moved > 1e-3                                      # the tolerance below is far below what training changed
    for k, a in single.items():
        b = ddp[k]
        if a.is_floating_point(): torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
        else: assert torch.equal(a, b), k                    # e.g. num_batches_tracked
    h1, h2 = pd.read_csv(tmp / "single" / "history.csv"), pd.read_csv(tmp / "ddp" / "history.csv")
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(h2["valid_loss"], h1["valid_loss"], rtol=1e-5)
    np.testing.assert_allclose(h2["valid_mFscore"], h1["valid_mFscore"], rtol=1e-12)


def test_validation_scores_are_identical(runs):
    _, tmp = runs
    m1 = json.loads((tmp / "single" / "val_metrics.json").read_text())
    m2 = json.loads((tmp / "ddp" / "val_metrics.json").read_text())
    assert m1["all"]["level1"]["n_pixels"] == 3 * 48 * 48     # every validation tile counted once
    for area in ("all", "changed", "unchanged"):
        assert m2[area] == m1[area], area
    assert m2["selection_score"] == m1["selection_score"]
    assert (pd.read_csv(tmp / "ddp" / "val_per_class.csv")).equals(pd.read_csv(tmp / "single" / "val_per_class.csv"))


def test_only_rank_zero_writes(runs):
    _, tmp = runs
    log = (tmp / "ddp" / "train.log").read_text()
    assert log.count("epoch 1/1") == 1 and "2 process(es)" in log
    assert "1 process(es)" in (tmp / "single" / "train.log").read_text()
    assert sorted(p.name for p in (tmp / "ddp").iterdir()) == sorted(p.name for p in (tmp / "single").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CROPKIT_SLOW_TESTS") != "1", reason="slow negative control; set CROPKIT_SLOW_TESTS=1")
def test_without_synchronised_batchnorm_the_runs_differ(runs):
    root, tmp = runs
    _torchrun(_train_args(root, tmp / "ddp_nosync", 1, "--no-sync-bn"))
    single, nosync = _weights(tmp / "single" / "last.pt"), _weights(tmp / "ddp_nosync" / "last.pt")
    worst = max(float((single[k] - nosync[k]).abs().max()) for k in single if single[k].is_floating_point())
    assert worst > 1e-3
