"""Bad-input matrix of training runs (issue 15): command-line options, run directories, checkpoints and model files.
Each case prepares a copy of a finished run (or nothing), calls the `cropkit` command line, and checks the exit status 2,
a one-line message naming the culprit, and that no file that existed before was changed or removed."""
import hashlib, pickle, shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from cropkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py
SMALL = ["-H", "hidden_dims=8", "--batchsize", "64", "-q"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A finished Victoria TempCNN run (1 epoch) and a random forest, copied for every case."
    base = tmp_path_factory.mktemp("runs")
    assert main(["train", "TempCNN", "--epochs", "1", "--logdir", str(base/"run"), *SMALL]) == 0
    assert main(["train", "RandomForest", "-H", "n_estimators=5", "--logdir", str(base/"rf"), "-q"]) == 0
    return base


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


class Planted:
    "Unpickling this creates a marker file: what a malicious model file would do."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.write_text, (Path(self.marker), "code ran"))


def _changed_weights(d: Path):
    ck = torch.load(d/"run"/"last.pt", weights_only=True)
    key = next(k for k, v in ck["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ck["state_dict"][key] = torch.rand_like(ck["state_dict"][key])
    torch.save(ck, d/"run"/"last.pt")

def _truncate(path: Path): path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])

def _skops_with_code(d: Path):
    import os, skops.io as sio
    (d/"rf"/"random_forest.skops").write_bytes(sio.dumps({"forest": os.system, "meta": "{}"}))


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list]                       # the command line, given the case folder
    expect: tuple                                      # fragments the one-line message must hold
    prepare: Callable[[Path], None] = lambda d: None   # damage done before the call (not part of the "unchanged" check)
    after: Callable[[Path], None] = lambda d: None     # extra checks after the call


RUN = lambda d: ["--logdir", str(d/"run")]
EVAL = lambda f: (lambda d: ["evaluate", str(d/f), "--output", str(d/"eval")])

CASES = [
    # command-line options: refused before any data is read
    Case("epochs 0", lambda d: ["train", "TempCNN", "--epochs", "0", *RUN(d/"new")], ("--epochs must be >= 1, got 0",)),
    Case("batch size 0", lambda d: ["train", "TempCNN", "-b", "0", *RUN(d/"new")], ("--batchsize must be >= 1",)),
    Case("workers -1", lambda d: ["train", "TempCNN", "--workers", "-1", *RUN(d/"new")], ("--workers must be >= 0, got -1",)),
    Case("threads 0", lambda d: ["train", "TempCNN", "--threads", "0", *RUN(d/"new")], ("--threads must be >= 1",)),
    Case("negative lr", lambda d: ["train", "TempCNN", "--lr", "-0.1", *RUN(d/"new")], ("lr must be a number > 0, got -0.1",)),
    Case("unknown optimizer", lambda d: ["train", "TempCNN", "--optimizer", "rmsprop", *RUN(d/"new")], ("unknown optimizer 'rmsprop'",)),
    Case("unknown scheduler", lambda d: ["train", "TempCNN", "--scheduler", "step", *RUN(d/"new")], ("unknown scheduler 'step'",)),
    Case("unknown hyperparameter", lambda d: ["train", "TempCNN", "-H", "depth=3", *RUN(d/"new")], ("depth",)),
    Case("malformed hyperparameter", lambda d: ["train", "TempCNN", "-H", "hidden_dims", *RUN(d/"new")], ("expected name=value",)),
    Case("unknown model", lambda d: ["train", "TempCNNN", *RUN(d/"new")], ("unknown model 'TempCNNN'", "TempCNN")),
    Case("unknown fold", lambda d: ["train", "TempCNN", "--dataset", "breizhcrops", "--root", str(d), "--mode", "evaluation9",
                                    *RUN(d/"new")], ("unknown mode 'evaluation9'",)),
    Case("unknown augmentation", lambda d: ["train", "TempCNN", "--augmentation", "warp=1", *RUN(d/"new")], ("unknown augmentation", "warp")),
    Case("unknown index", lambda d: ["train", "TempCNN", "--indices", "NDXI", *RUN(d/"new")], ("unknown spectral index 'NDXI'",)),
    Case("victoria root missing", lambda d: ["train", "TempCNN", "--root", str(d/"nowhere"), *RUN(d/"new")], ("nowhere",)),
    Case("breizhcrops root missing", lambda d: ["train", "TempCNN", "--dataset", "breizhcrops", "--root", str(d/"nowhere"),
                                                *RUN(d/"new")], ("nowhere",)),
    # run directories
    Case("second run into a finished logdir", lambda d: ["train", "TempCNN", "--epochs", "1", *RUN(d), *SMALL],
         ("already holds a run", "--resume", "--overwrite")),
    Case("resume and overwrite", lambda d: ["train", "TempCNN", "--resume", "--overwrite", *RUN(d), *SMALL], ("exclude each other",)),
    Case("resume without last.pt", lambda d: ["train", "TempCNN", "--resume", *RUN(d/"new"), *SMALL], ("no checkpoint", "last.pt")),
    Case("resume with another learning rate", lambda d: ["train", "TempCNN", "--epochs", "2", "--resume", "--lr", "0.5", *RUN(d), *SMALL],
         ("belongs to another run", "training.lr")),
    Case("resume with another model size", lambda d: ["train", "TempCNN", "--epochs", "2", "--resume", *RUN(d), "-H", "hidden_dims=16",
                                                      "--batchsize", "64", "-q"], ("belongs to another run", "hidden_dims: 8 in the checkpoint, 16 now")),
    Case("resume from a corrupt last.pt", lambda d: ["train", "TempCNN", "--epochs", "2", "--resume", *RUN(d), *SMALL],
         ("last.pt is corrupt",), prepare=_changed_weights),
    Case("logdir is a file", lambda d: ["train", "TempCNN", "--epochs", "1", "--logdir", str(d/"run"/"history.csv"), *SMALL],
         ("history.csv", "not a folder")),
    # checkpoints given to evaluate
    Case("checkpoint missing", EVAL("run/none.pt"), ("checkpoint not found", "none.pt")),
    Case("empty checkpoint", EVAL("run/last.pt"), ("last.pt is empty",), prepare=lambda d: (d/"run"/"last.pt").write_bytes(b"")),
    Case("text file as checkpoint", EVAL("run/history.csv"), ("history.csv is not a checkpoint",)),
    Case("truncated checkpoint", EVAL("run/last.pt"), ("last.pt", "truncated or corrupt"), prepare=lambda d: _truncate(d/"run"/"last.pt")),
    Case("weights changed after writing", EVAL("run/last.pt"), ("last.pt is corrupt", "weights hash"), prepare=_changed_weights),
    Case("foreign torch file", EVAL("run/other.pt"), ("not a cropkit checkpoint",),
         prepare=lambda d: torch.save({"weights": torch.zeros(3)}, d/"run"/"other.pt")),
    Case("evaluation outputs exist", lambda d: ["evaluate", str(d/"run"/"last.pt"), "--output", str(d/"run")],
         ("already exist", "--overwrite"), prepare=lambda d: (d/"run"/"metrics-last-victoria-evaluation.json").write_text("{}")),
    # random-forest files: opening one never runs its code
    Case("pickle with planted code", EVAL("rf/random_forest.pkl"), ("is a pickle", "retrain"),
         prepare=lambda d: (d/"rf"/"random_forest.pkl").write_bytes(pickle.dumps(Planted(d/"PWNED"))),
         after=lambda d: not (d/"PWNED").exists() or pytest.fail("the planted code ran")),
    Case("skops file with untrusted types", EVAL("rf/random_forest.skops"), ("does not trust",), prepare=_skops_with_code),
    Case("empty skops file", EVAL("rf/random_forest.skops"), ("not a skops random-forest file",),
         prepare=lambda d: (d/"rf"/"random_forest.skops").write_bytes(b"")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_run_input(case, finished, tmp_path, capsys):
    d = tmp_path/"case"
    shutil.copytree(finished, d)
    case.prepare(d)
    before = hashes(d)
    code = main([str(a) for a in case.argv(d)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cropkit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in case.expect: assert fragment in err, (fragment, err)
    after = hashes(d)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    assert not [k for k in after if k not in before and not k.startswith("new/")], "files appeared"
    case.after(d)
