"""Integration and bad-input tests of `cropkit.train`: resume equivalence, early stopping, NaN handling,
checkpoint atomicity and the history CSV. Tiny data, CPU only."""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cropkit.core import set_seed
from cropkit.train import (BEST_FILE, HISTORY_FILE, LAST_FILE, Learner, NonFiniteLossError, Predictions, fit,
                           load_checkpoint, load_predictions, predict, save_predictions, write_checkpoint)
import cropkit.train.engine as train_mod


class Toy(Dataset):
    "Separable toy parcels, jittered on access with NumPy's global RNG (like random time-step sampling)."
    def __init__(self, n=40, T=4, D=3, C=3, seed=0, jitter=0.05, nan_at=(), string_ids=False):
        g = np.random.default_rng(seed)
        centers = np.random.default_rng(7).normal(size=(C, T, D))
        self.y = g.integers(0, C, n)
        self.X = (centers[self.y] + 0.5 * g.normal(size=(n, T, D))).astype(np.float32)
        for i in nan_at: self.X[i, 0, 0] = np.nan
        self.jitter, self.string_ids = np.float32(jitter), string_ids
        self.classes, self.num_classes = [f"c{i}" for i in range(C)], C
        self.bands, self.sequencelength = [f"B{i}" for i in range(D)], T

    def __len__(self): return len(self.y)

    def __getitem__(self, i):
        x = self.X[i]
        if self.jitter: x = x + self.jitter * np.random.randn(*x.shape).astype(np.float32)
        fid = f"parcel-{i}" if self.string_ids else 500 + i
        return torch.from_numpy(x), torch.tensor(int(self.y[i])), fid


def mlp(seed=0, T=4, D=3, C=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(T * D, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, C))


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


TRAIN, VALID = Toy(40, seed=0), Toy(20, seed=1, jitter=0)


def make(logdir, epochs_cb=(), **kw):
    args = dict(lr=0.02, batch_size=8, logdir=logdir, progress=False, seed=11, callbacks=epochs_cb)
    return Learner(mlp(seed=3), TRAIN, VALID, **(args | kw))


class Stop(Exception): pass


def stop_after(n):
    def cb(learner, row):
        if row["epoch"] == n: raise Stop(f"interrupted after epoch {n}")
    return cb


def assert_same_run(a: Learner, b: Learner):
    pd.testing.assert_frame_equal(a.history.drop(columns="time"), b.history.drop(columns="time"))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


# --- resume ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(scheduler="onecycle", optimizer="adamw"),
                                dict(scheduler="warmup_cosine", warmup_epochs=1, grad_clip=0.5, optimizer="sgd"),
                                dict(patience=10, monitor="kappa")])
def test_resume_equals_uninterrupted(tmp_path, kw):
    full = make(tmp_path/"full", **kw); full.fit(4)
    with pytest.raises(Stop): make(tmp_path/"cut", epochs_cb=[stop_after(2)], **kw).fit(4)
    assert load_checkpoint(tmp_path/"cut"/LAST_FILE)["training_state"]["epoch"] == 2
    np.random.rand(5); torch.rand(5); __import__("random").random()   # disturb the global RNGs
    resumed = make(tmp_path/"cut", **kw); resumed.fit(4, resume=True)
    assert_same_run(full, resumed)
    for f in (HISTORY_FILE,):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path/"full"/f).drop(columns="time"),
                                      pd.read_csv(tmp_path/"cut"/f).drop(columns="time"))
    a, b = load_checkpoint(tmp_path/"full"/BEST_FILE), load_checkpoint(tmp_path/"cut"/BEST_FILE)
    assert a["training_state"]["epoch"] == b["training_state"]["epoch"]


class CtrlC(nn.Module):
    "The toy MLP; raises KeyboardInterrupt (as Ctrl-C does) in training forward call `at`."
    def __init__(self, at=None):
        super().__init__(); self.net, self.at, self.calls = mlp(seed=3), at, 0
    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at: raise KeyboardInterrupt
        return self.net(x)


def test_ctrl_c_in_the_middle_of_an_epoch_then_resume(tmp_path):
    kw = dict(lr=0.02, batch_size=8, progress=False, seed=11, scheduler="cosine")
    full = Learner(CtrlC(), TRAIN, VALID, logdir=tmp_path/"full", **kw); full.fit(4)
    with pytest.raises(KeyboardInterrupt):
        Learner(CtrlC(at=2 * 5 + 3), TRAIN, VALID, logdir=tmp_path/"cut", **kw).fit(4)   # epoch 3, batch 2
    assert load_checkpoint(tmp_path/"cut"/LAST_FILE)["training_state"]["epoch"] == 2
    assert len(pd.read_csv(tmp_path/"cut"/HISTORY_FILE)) == 2
    resumed = Learner(CtrlC(), TRAIN, VALID, logdir=tmp_path/"cut", **kw); resumed.fit(4, resume=True)
    assert_same_run(full, resumed)


def test_resume_twice_and_from_explicit_path(tmp_path):
    full = make(tmp_path/"full"); full.fit(5)
    with pytest.raises(Stop): make(tmp_path/"cut", epochs_cb=[stop_after(1)]).fit(5)
    with pytest.raises(Stop): make(tmp_path/"cut", epochs_cb=[stop_after(3)]).fit(5, resume=True)
    resumed = make(None); resumed.fit(5, resume=tmp_path/"cut"/LAST_FILE)   # explicit path, no logdir
    assert_same_run(full, resumed)


def test_resume_with_dataloaders_and_without_schedule_can_extend(tmp_path):
    def learner(logdir):
        return Learner(mlp(1), DataLoader(TRAIN, batch_size=8, shuffle=True), DataLoader(VALID, batch_size=8),
                       lr=0.01, logdir=logdir, progress=False)
    full = learner(tmp_path/"a"); full.fit(4)
    part = learner(tmp_path/"b"); part.fit(2)          # a finished 2-epoch run, extended to 4 (no LR schedule)
    more = learner(tmp_path/"b"); more.fit(4, resume=True)
    assert_same_run(full, more)


def test_resume_refuses_changed_schedule_and_changed_settings(tmp_path):
    make(tmp_path, scheduler="cosine").fit(2)
    with pytest.raises(ValueError, match="resume with epochs=2"):
        make(tmp_path, scheduler="cosine").fit(3, resume=True)
    make(tmp_path/"b").fit(2)
    before = {p.name: p.read_bytes() for p in (tmp_path/"b").iterdir()}
    with pytest.raises(ValueError, match="belongs to another run:\n  training.lr: 0.02 in the checkpoint, 0.05 now"):
        make(tmp_path/"b", lr=0.05).fit(3, resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path/"b").iterdir()} == before


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint to resume from not found"):
        make(tmp_path).fit(2, resume=True)
    with pytest.raises(ValueError, match="needs a logdir"):
        make(None).fit(2, resume=True)
    make(tmp_path).fit(1)
    with pytest.raises(ValueError, match="no resumable training state"):
        make(None).fit(2, resume=tmp_path/BEST_FILE)
    other = Learner(mlp(T=4, C=3).append(nn.Linear(3, 3)), TRAIN, VALID, logdir=tmp_path, progress=False,
                    lr=0.02, batch_size=8, seed=11)
    with pytest.raises(ValueError, match="do not fit this model"):
        other.fit(2, resume=True)


def test_fresh_fit_refuses_a_finished_run_unless_overwrite(tmp_path):
    make(tmp_path).fit(1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run .*--resume.*--overwrite"):
        make(tmp_path).fit(1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path/"results.json").write_text("{}")                       # a file of the old run ...
    make(tmp_path, overwrite=True).fit(2)
    assert not (tmp_path/"results.json").exists()                    # ... never mixed with the new one
    assert load_checkpoint(tmp_path/LAST_FILE)["training_state"]["epoch"] == 2


# --- early stopping ----------------------------------------------------------------------------------------

def test_early_stopping_stops_and_keeps_best(tmp_path):
    lrn = make(tmp_path, lr=0.1, patience=2, monitor="valid_loss", min_delta=1e-3)
    hist = lrn.fit(40)
    es = lrn.early_stopping
    assert lrn.stopped_early and len(hist) == es.best_epoch + 2 < 40
    assert es.best == hist["valid_loss"].iloc[es.best_epoch - 1]
    assert (hist["valid_loss"].iloc[es.best_epoch:] > es.best - 1e-3).all()   # no later improvement > min_delta
    best = load_checkpoint(tmp_path/BEST_FILE)
    assert best["training_state"]["epoch"] == es.best_epoch
    assert best["training_state"]["metrics"]["valid_loss"] == pytest.approx(es.best)
    # resuming an early-stopped run does nothing more
    again = make(tmp_path, lr=0.1, patience=2, monitor="valid_loss", min_delta=1e-3)
    assert len(again.fit(40, resume=True)) == len(hist) and again.stopped_early
    lrn.load_best()
    assert lrn.validate()["valid_loss"] == pytest.approx(es.best, rel=1e-5)


def test_monitor_without_validation_is_train_loss_and_unknown_monitor_fails():
    lrn = Learner(mlp(), TRAIN, progress=False, batch_size=8)
    assert lrn.config["monitor"] == "train_loss"
    lrn.fit(2)
    assert list(lrn.history.columns) == ["epoch", "train_loss", "lr", "time"]
    with pytest.raises(ValueError, match="unknown monitor 'f2'.*valid_f1_macro"):
        Learner(mlp(), TRAIN, VALID, monitor="f2")


# --- NaN handling -------------------------------------------------------------------------------------------

class NaNFrom(nn.Module):
    "Outputs NaN from training forward call `start` on (1-based)."
    def __init__(self, start):
        super().__init__(); self.net, self.start, self.calls = mlp(), start, 0
    def forward(self, x):
        if self.training: self.calls += 1
        out = self.net(x)
        return out * float("nan") if self.training and self.calls >= self.start else out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    snapshots = {}
    def snap(learner, row):
        snapshots[row["epoch"]] = {f: (tmp_path/f).read_bytes() for f in (BEST_FILE, LAST_FILE, HISTORY_FILE)}
    model = NaNFrom(start=2 * 5 + 3)    # 5 batches per epoch: NaN in epoch 3, batch 2
    lrn = Learner(model, TRAIN, VALID, lr=0.01, batch_size=8, logdir=tmp_path, progress=False, callbacks=[snap])
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 3, batch 2.*are those of epoch 2"):
        lrn.fit(6)
    for f in (BEST_FILE, LAST_FILE, HISTORY_FILE):
        assert (tmp_path/f).read_bytes() == snapshots[2][f], f
    assert lrn.history["epoch"].tolist() == [1, 2]
    last = load_checkpoint(tmp_path/LAST_FILE)
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob(".*.part"))


def test_nan_loss_in_first_epoch_without_logdir():
    lrn = Learner(NaNFrom(start=1), TRAIN, progress=False, batch_size=8)
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 0.*no checkpoint was written yet"):
        lrn.fit(2)


class PoisonLastBatch(nn.Module):
    "Finite loss, but sets a weight to NaN on training call `at` (the last batch of an epoch)."
    def __init__(self, at):
        super().__init__(); self.net, self.at, self.calls = mlp(), at, 0
    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                with torch.no_grad(): self.net[1].weight[0, 0] = float("nan")
                return self.net[4].bias.expand(len(x), -1) * 1.0          # finite output, loss and step
        return self.net(x)


def test_nan_weights_are_never_checkpointed(tmp_path):
    lrn = Learner(PoisonLastBatch(at=2 * 5), TRAIN, VALID, lr=0.01, batch_size=8, logdir=tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match="weights became NaN/inf during epoch 2.*those of epoch 1"):
        lrn.fit(4)
    last = load_checkpoint(tmp_path/LAST_FILE)
    assert last["training_state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nan_inputs_name_the_field_ids():
    lrn = Learner(mlp(), Toy(16, nan_at=(3, 9), string_ids=True, jitter=0), progress=False, batch_size=16)
    with pytest.raises(ValueError, match=r"epoch 1, batch 0: .*2 sample\(s\): field ids \['parcel-3', 'parcel-9'\]"):
        lrn.fit(1)
    with pytest.raises(ValueError, match="validate, batch 0: .*field ids \\[505\\]"):
        Learner(mlp(), TRAIN, Toy(8, nan_at=(5,), jitter=0), progress=False).fit(1)


# --- checkpoints and files ---------------------------------------------------------------------------------

def test_checkpoint_contents_and_weights_only_loading(tmp_path):
    lrn = make(tmp_path, model_name="toy-mlp", hparams={"hidden": 12}); lrn.fit(2)
    for f in (BEST_FILE, LAST_FILE):
        ck = torch.load(tmp_path/f, map_location="cpu", weights_only=True)   # no pickled code needed
        assert (ck["name"], ck["hparams"], ck["input_dim"], ck["num_classes"], ck["sequencelength"], ck["classes"]) == \
               ("toy-mlp", {"hidden": 12}, 3, 3, 4, ["c0", "c1", "c2"])
    state = load_checkpoint(tmp_path/LAST_FILE)["training_state"]
    assert {"epoch", "rng", "history", "config", "stopped_early", "best_epoch"} <= set(state)
    assert {"optimizer_states", "lr_schedulers", "loops", "weights_sha256", "manifest"} <= set(load_checkpoint(tmp_path/LAST_FILE))
    assert state["config"]["lr"] == 0.02 and len(state["history"]) == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    lrn = make(tmp_path); lrn.fit(2)
    before = (tmp_path/LAST_FILE).read_bytes()
    real_save = torch.save
    def crashing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k); f.truncate(100)        # half-written file ...
        raise OSError("disk full")                         # ... and a crash
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path/LAST_FILE, {"state_dict": {}, "training_state": {"epoch": 99}})
    monkeypatch.undo()
    assert (tmp_path/LAST_FILE).read_bytes() == before
    assert load_checkpoint(tmp_path/LAST_FILE)["training_state"]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BEST_FILE, LAST_FILE, HISTORY_FILE, "manifest.json"])


def test_crash_while_saving_during_fit_keeps_previous_epoch(tmp_path, monkeypatch):
    real = train_mod.write_checkpoint
    def flaky(path, checkpoint):
        if Path(path).name == LAST_FILE and checkpoint["training_state"]["epoch"] == 2: raise OSError("killed while writing")
        return real(path, checkpoint)
    monkeypatch.setattr(train_mod, "write_checkpoint", flaky)
    with pytest.raises(OSError, match="killed while writing"):
        make(tmp_path).fit(3)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path/LAST_FILE)["training_state"]["epoch"] == 1
    assert not list(tmp_path.glob(".*.part"))


def test_history_csv_written_every_epoch(tmp_path):
    seen = []
    lrn = make(tmp_path, epochs_cb=[lambda l, row: seen.append(len(pd.read_csv(tmp_path/HISTORY_FILE)))])
    hist = lrn.fit(3)
    assert seen == [1, 2, 3]
    csv = pd.read_csv(tmp_path/HISTORY_FILE)
    assert list(csv.columns) == list(hist.columns)
    assert {"valid_accuracy", "valid_average_accuracy", "valid_kappa", "valid_f1_weighted", "lr"} <= set(csv.columns)
    np.testing.assert_allclose(csv.drop(columns="time").to_numpy(), hist.drop(columns="time").to_numpy(), rtol=1e-12)


def test_unwritable_logdir_fails_before_training(tmp_path, monkeypatch):
    (tmp_path/"file").write_text("x")
    model = mlp(); w0 = model[1].weight.detach().clone()
    with pytest.raises(OSError, match="cannot create logdir"):
        Learner(model, TRAIN, logdir=tmp_path/"file"/"run", progress=False).fit(2)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        Learner(model, TRAIN, logdir=tmp_path/"file", progress=False).fit(2)
    def deny(*a, **k): raise PermissionError("Permission denied")
    monkeypatch.setattr(train_mod.tempfile, "TemporaryFile", deny)
    with pytest.raises(PermissionError, match="is not writable"):
        Learner(model, TRAIN, logdir=tmp_path/"ro", progress=False).fit(2)
    assert torch.equal(model[1].weight, w0)


@pytest.mark.parametrize("kw,msg", [
    (dict(lr=0), "lr must be a number > 0, got 0"), (dict(lr=-0.1), "lr must be"),
    (dict(lr="fast"), "'fast'"), (dict(weight_decay=-1e-4), "weight_decay must be a number >= 0"),
    (dict(batch_size=0), "batch_size must be an integer > 0"), (dict(optimizer="adagrad"), "adam, adamw, sgd"),
    (dict(scheduler="step"), "unknown scheduler 'step'; choose one of None, 'none', 'cosine'"),
    (dict(scheduler="warmup_cosine"), "0 < warmup_epochs < epochs"), (dict(grad_clip=-1), "grad_clip"),
    (dict(patience=0), "patience must be an integer > 0"), (dict(seed=-3), "seed must be a non-negative integer"),
])
def test_bad_hyperparameters(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        Learner(mlp(), TRAIN, VALID, **kw)


@pytest.mark.parametrize("epochs", [0, -2, 1.5])
def test_bad_epochs(epochs):
    with pytest.raises(ValueError, match="epochs must be an integer > 0"):
        Learner(mlp(), TRAIN, progress=False).fit(epochs)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs=3, epochs=3"):
        Learner(mlp(), TRAIN, scheduler="warmup_cosine", warmup_epochs=3, progress=False).fit(3)


# --- predictions --------------------------------------------------------------------------------------------

def test_predict_and_save_predictions(tmp_path):
    set_seed(0)
    lrn = fit(mlp(), TRAIN, VALID, epochs=3, lr=0.05, batch_size=8, progress=False)
    ds = Toy(12, seed=4, jitter=0, string_ids=True)
    p = lrn.predict(ds)
    assert isinstance(p, Predictions) and len(p) == 12 and p.field_ids[0] == "parcel-0"
    np.testing.assert_allclose(p.y_score.sum(1), 1, rtol=1e-5)
    q = predict(lrn.model, ds, device="cpu", batch_size=5)
    np.testing.assert_array_equal(p.y_pred, q.y_pred)
    for name in ("p.csv", "p.npz"):
        r = load_predictions(save_predictions(p, tmp_path/name, classes=ds.classes))
        np.testing.assert_array_equal(r.field_ids, p.field_ids)
        np.testing.assert_array_equal(r.y_true, p.y_true)
        np.testing.assert_allclose(r.y_score, p.y_score, rtol=1e-6)
    assert p.metrics()["accuracy"] == pytest.approx(float((p.y_true == p.y_pred).mean()))
    with pytest.raises(ValueError, match="2 class names given for 3 score columns"):
        p.to_frame(["a", "b"])
    (tmp_path/"bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_predictions(tmp_path/"bad.csv")
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        load_predictions(tmp_path/"none.npz")


def test_predict_without_field_ids_uses_positions():
    ds = torch.utils.data.TensorDataset(torch.randn(6, 4, 3), torch.randint(0, 3, (6,)))
    p = predict(mlp(), ds, device="cpu", batch_size=4)
    assert p.field_ids.tolist() == list(range(6))


def test_registry_model_checkpoints_open_with_load_model(tmp_path):
    from cropkit.models.registry import CHECKPOINT_FORMAT, get_model, load_model
    set_seed(0)
    model = get_model("LSTM", input_dim=3, num_classes=3, hidden_dims=8, num_layers=1, bidirectional=False)
    lrn = fit(model, TRAIN, VALID, epochs=2, batch_size=8, logdir=tmp_path, progress=False)
    x = torch.from_numpy(VALID.X[:5])
    lrn.model.eval()
    for f in (BEST_FILE, LAST_FILE):
        loaded, meta = load_model(tmp_path/f, device="cpu")
        assert meta["format"] == CHECKPOINT_FORMAT and meta["name"] == "LSTM" and meta["classes"] == ["c0", "c1", "c2"]
        assert meta["hparams"]["hidden_dims"] == 8 and meta["sequencelength"] is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), lrn.model(x))      # last.pt = the final weights


def test_disk_full_while_writing_a_checkpoint_names_the_path(tmp_path, monkeypatch):
    "torch.save reports a full disk as RuntimeError('... inline_container.cc ...'): the message names the file and the space."
    lrn = make(tmp_path); lrn.fit(1)
    before = (tmp_path/LAST_FILE).read_bytes()
    def full(obj, f, *a, **k):
        f.write(b"x" * 10)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*last.pt.*inline_container.*free space in .*MiB"):
        write_checkpoint(tmp_path/LAST_FILE, {"state_dict": {}})
    monkeypatch.undo()
    assert (tmp_path/LAST_FILE).read_bytes() == before and not list(tmp_path.glob(".*.part"))


def test_bf16_on_cpu_is_opt_in_and_clips_gradients(tmp_path):
    "amp='always' trains under bf16 autocast on CPU (with gradient clipping: the optimizer is then not fused);"
    "the default keeps float32 on CPU; the choice is recorded and a resume with another one is refused."
    lrn = make(tmp_path / "bf16", amp="always", grad_clip=1.0)
    lrn.fit(6)
    assert lrn.trainer.precision == "bf16-mixed"
    assert lrn.trainer.optimizers[0].defaults["fused"] is None          # Lightning cannot clip a fused step in bf16
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in lrn.model.parameters())
    assert lrn.history["train_loss"].iloc[-1] < lrn.history["train_loss"].iloc[0]
    import json
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["training"]["amp"] == "always"
    plain = make(tmp_path / "fp32")
    plain.fit(1)
    assert plain.trainer.precision == "32-true" and plain.trainer.optimizers[0].defaults["fused"] is True
    with pytest.raises(ValueError, match="amp"):
        make(tmp_path / "bf16", amp=False).fit(8, resume=True)
    with pytest.raises(ValueError, match="amp must be True"):
        make(tmp_path / "bad", amp="cpu")
