"""Tests of `cropkit.evaluate.segmentation` beyond the notebook: agreement with scikit-learn and with the published
(mmseg-style) per-tile intersect/union evaluation, the sum over two Gloo processes, JSON/CSV output and bad input."""
import json, os, socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from cropkit.data.h2crop import LEVELS, default_taxonomy
from cropkit.evaluate.segmentation import ConfusionAccumulator, HierarchicalMetrics, class_table, confusion_scores


def _maps(seed, n=4, size=12, classes=9, ignore=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, classes, (n, size, size), generator=g)
    p = torch.where(torch.rand(n, size, size, generator=g) < 0.5, t, torch.randint(0, classes, (n, size, size), generator=g))
    if ignore is not None: t[:, :2] = ignore
    return p, t


def test_batches_match_sklearn_on_all_pixels():
    acc = ConfusionAccumulator(9, ignore_index=255)
    ps, ts = [], []
    for seed in range(5):
        p, t = _maps(seed, ignore=255)
        acc.update(p, t)
        keep = t != 255
        ps.append(p[keep]); ts.append(t[keep])
    p, t = torch.cat(ps).numpy(), torch.cat(ts).numpy()
    np.testing.assert_array_equal(acc.matrix.numpy(), confusion_matrix(t, p, labels=range(9)))
    s = acc.compute()
    present = np.unique(t)
    P, R, F, _ = precision_recall_fscore_support(t, p, labels=present, zero_division=0)
    assert s["mFscore"] == pytest.approx(f1_score(t, p, labels=present, average="macro", zero_division=0))
    np.testing.assert_allclose(s["Acc"][present], R)
    np.testing.assert_allclose(s["Precision"][present], P)
    assert s["aAcc"] == pytest.approx((t == p).mean())


def _mmseg_like(pairs, n):
    "Independent re-derivation of the published evaluation: per-tile histograms of intersection, prediction, label."
    inter, pred, lab = np.zeros(n), np.zeros(n), np.zeros(n)
    for p, t in pairs:
        p, t = p.flatten().numpy(), t.flatten().numpy()
        inter += np.bincount(p[p == t], minlength=n); pred += np.bincount(p, minlength=n); lab += np.bincount(t, minlength=n)
    union = pred + lab - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, recall = inter / union, inter / lab
        prec = inter / (pred + 1e-8)
        f = 2 * prec * recall / (prec + recall + 1e-8)
    return {"aAcc": inter.sum() / lab.sum(), "mIoU": np.nanmean(iou), "mAcc": np.nanmean(recall),
            "mFscore": np.nanmean(f), "mPrecision": np.nanmean(prec)}


def test_mmseg_convention_reproduces_published_formulas():
    # class 7 is predicted but absent from the labels, class 8 absent from both: the cases where conventions differ
    pairs = []
    for seed in range(3):
        p, t = _maps(seed, classes=7)
        p[0, 0, :3] = 7
        pairs.append((p, t))
    acc = ConfusionAccumulator(9)
    for p, t in pairs: acc.update(p, t)
    ref = _mmseg_like(pairs, 9)
    got = acc.compute("mmseg")
    for k, v in ref.items(): assert got[k] == pytest.approx(v, rel=1e-9), k
    present = acc.compute()
    assert present["mFscore"] == pytest.approx(ref["mFscore"], abs=1e-7)
    assert present["mIoU"] > got["mIoU"]          # mmseg averages class 7 in with IoU 0


def _worker(rank, world, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tax = default_taxonomy()
        hm = HierarchicalMetrics(tax)
        for i in range(rank, 5, world):            # tiles 0, 2, 4 on rank 0; 1, 3 on rank 1
            hm.update(*_tile(tax, i))
        hm.all_reduce()
        if rank == 0:
            torch.save({a: {l: acc.matrix for l, acc in accs.items()} for a, accs in hm.accumulators.items()}, result_path)
    finally:
        dist.destroy_process_group()


def _tile(tax, i):
    g = torch.Generator().manual_seed(100 + i)
    lab4 = torch.randint(1, tax.num_classes(4), (1, 8, 8), generator=g)
    labels = tax.expand(lab4, LEVELS).permute(1, 0, 2, 3)
    priors = torch.where(torch.rand(1, 4, 8, 8, generator=g) < 0.3, 0, labels)
    outputs = {f"level{l}": torch.randn(1, tax.num_classes(l), 8, 8, generator=g) for l in LEVELS}
    return outputs, {"label": labels, "priors": priors}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    out = tmp_path / "reduced.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    reduced = torch.load(out)
    tax = default_taxonomy()
    single = HierarchicalMetrics(tax)
    for i in range(5): single.update(*_tile(tax, i))
    for area, accs in single.accumulators.items():
        for level, acc in accs.items():
            assert torch.equal(reduced[area][level], acc.matrix), (area, level)


def test_save_writes_strict_json_and_named_tables(tmp_path):
    tax = default_taxonomy()
    hm = HierarchicalMetrics(tax, levels=(1, 4))
    outputs, batch = _tile(tax, 0)
    batch["label"] = batch["label"][:, [0, 3]]
    hm.update({k: outputs[k] for k in ("level1", "level4")}, batch)
    paths = hm.save(tmp_path / "deep" / "folder", prefix="val")

    def no_nan(token): raise AssertionError(f"non-standard JSON constant {token}")
    data = json.loads(paths["metrics"].read_text(), parse_constant=no_nan)
    assert data["levels"] == ["level1", "level4"] and set(data) >= {"all", "changed", "unchanged"}
    assert data["selection_score"] == pytest.approx(np.mean([data["all"]["level1"]["mFscore"], data["all"]["level4"]["mFscore"]]))
    table = pd.read_csv(paths["per_class"])
    assert set(table["level"]) == {"level1", "level4"}
    row = table.query("area == 'all' and level == 'level4' and id == 5").iloc[0]
    assert row["name"] == tax.names(4)[5]
    summary = pd.read_csv(paths["summary"], index_col=[0, 1])
    assert summary.loc[("all", "mean"), "mFscore"] == pytest.approx(data["selection_score"])


def test_bad_input_is_named():
    tax = default_taxonomy()
    outputs, batch = _tile(tax, 0)
    bad = dict(batch, label=batch["label"].clone())
    bad["label"][0, 3, 0, 0] = 500
    with pytest.raises(ValueError, match=r"class ids \[500\] outside 0\.\.101"):
        HierarchicalMetrics(tax).update(outputs, bad)
    with pytest.raises(TypeError, match="integer class ids"):
        HierarchicalMetrics(tax).update(outputs, dict(batch, label=batch["label"].float()))
    small = {k: v[..., :4, :4] for k, v in outputs.items()}
    with pytest.raises(ValueError, match="differ in shape"):
        HierarchicalMetrics(tax).update(small, batch)
    with pytest.raises(ValueError, match="unknown convention"):
        HierarchicalMetrics(tax, convention="macro")
    with pytest.raises(ValueError, match="negative counts"):
        confusion_scores(np.array([[1, -1], [0, 2]]))
    with pytest.raises(ValueError, match="mask has shape"):
        ConfusionAccumulator(3).update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long),
                                       torch.ones(3, dtype=torch.bool))


def test_empty_and_absent_classes_are_nan_not_zero():
    s = ConfusionAccumulator(4).compute()
    assert np.isnan(s["aAcc"]) and np.isnan(s["mFscore"]) and s["n_pixels"] == 0
    t = class_table(ConfusionAccumulator(3).update(torch.tensor([0, 1]), torch.tensor([0, 0])).compute())
    assert np.isnan(t.loc[2, "IoU"]) and t.loc[1, "Precision"] == 0 and np.isnan(t.loc[1, "Fscore"])
