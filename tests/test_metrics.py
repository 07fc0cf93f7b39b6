"""Tests of `cropkit.evaluate.metrics`: agreement with scikit-learn, absent classes, and bad input."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from cropkit.evaluate.metrics import (METRIC_KEYS, check_labels, classification_metrics, classification_report_df,
                             confusion_matrix_df)

rng = np.random.default_rng(0)
Y_TRUE = rng.integers(0, 5, 300)
Y_PRED = np.where(rng.random(300) < 0.7, Y_TRUE, rng.integers(0, 5, 300))
CLASSES = ["barley", "wheat", "rapeseed", "corn", "meadow"]


def test_keys_and_agreement_with_sklearn():
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert tuple(m) == METRIC_KEYS and all(isinstance(v, float) for v in m.values())
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert m["average_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(Y_TRUE, Y_PRED))
    for avg in ("micro", "macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED, average=avg))
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, average=avg))
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average=avg))
    assert m["f1_micro"] == pytest.approx(m["accuracy"])


def test_inputs_as_lists_tensors_and_floats_agree():
    ref = classification_metrics(Y_TRUE, Y_PRED, labels=5)
    assert classification_metrics(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), labels=range(5)) == ref
    assert classification_metrics(Y_TRUE.tolist(), Y_PRED.astype(np.float32), labels=5) == ref


def test_absent_classes_do_not_warn_or_crash():
    y_true = [0, 0, 1, 1, 3]
    y_pred = [0, 1, 1, 1, 1]          # class 3 never predicted, class 2 nowhere, class 4 nowhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true, y_pred, labels=5)
        report = classification_report_df(y_true, y_pred, CLASSES)
        cm = confusion_matrix_df(y_true, y_pred, CLASSES, normalize="true")
    assert m["average_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["precision_macro"] == pytest.approx((1 + 2 / 4 + 0) / 3)     # classes 2 and 4 do not count
    assert report.loc["corn", ["precision", "recall", "f1"]].tolist() == [0, 0, 0]
    assert report.loc["rapeseed", "support"] == 0 and report["support"].sum() == 5
    assert cm.loc["meadow"].tolist() == [0.0] * 5 and np.isfinite(cm.values).all()


def test_degenerate_single_class():
    m = classification_metrics([2, 2, 2], [2, 2, 2], labels=3)
    assert m["accuracy"] == m["kappa"] == m["f1_macro"] == 1.0


def test_report_and_confusion_matrix():
    report = classification_report_df(Y_TRUE, Y_PRED, CLASSES)
    assert list(report.index) == CLASSES and report.index.name == "class"
    assert list(report.columns) == ["class_id", "precision", "recall", "f1", "support"]
    np.testing.assert_array_equal(report["support"], np.bincount(Y_TRUE, minlength=5))
    np.testing.assert_allclose(report["f1"], skm.f1_score(Y_TRUE, Y_PRED, average=None))
    cm = confusion_matrix_df(Y_TRUE, Y_PRED, CLASSES)
    assert (cm.index.name, cm.columns.name) == ("true", "predicted")
    np.testing.assert_array_equal(cm.values, skm.confusion_matrix(Y_TRUE, Y_PRED))
    np.testing.assert_allclose(confusion_matrix_df(Y_TRUE, Y_PRED, CLASSES, "true").values.sum(1), 1)
    np.testing.assert_allclose(confusion_matrix_df(Y_TRUE, Y_PRED, CLASSES, "pred").values.sum(0), 1)
    np.testing.assert_allclose(np.diag(confusion_matrix_df(Y_TRUE, Y_PRED, CLASSES, "true")), report["recall"])
    assert list(confusion_matrix_df([0, 1], [1, 1], 3).index) == ["0", "1", "2"]


@pytest.mark.parametrize("y_true,y_pred,labels,err,msg", [
    ([0, 1, 2], [0, 1], None, ValueError, "differ in length: 3 vs 2"),
    ([], [], None, ValueError, "y_true is empty"),
    ([0, 1, 7], [0, 1, 1], 3, ValueError, r"y_true holds class ids \[7\] \(1 samples\) outside the 3 valid labels 0..2"),
    ([0, 1, 1], [0, 4, 4], 3, ValueError, r"y_pred holds class ids \[4\] \(2 samples\)"),
    ([0, -1], [0, 0], None, ValueError, "y_true holds negative class ids"),
    ([0, 1], [0.0, np.nan], None, ValueError, "y_pred must hold integer class ids; found"),
    ([0, 1], [0.2, 1.0], None, ValueError, r"found \[0.2\] at positions \[0\]"),
    (["a", "b"], [0, 1], None, TypeError, "y_true must hold integer class ids, got dtype"),
    (np.zeros((2, 3)), [0, 1], None, ValueError, "1-D vector of class ids, got shape"),
    ([0, 1], [0, 1], 0, ValueError, "number of classes must be >= 1"),
    ([0, 1], [0, 1], [0, 1, 1], ValueError, "labels contains duplicates"),
])
def test_bad_input(y_true, y_pred, labels, err, msg):
    with pytest.raises(err, match=msg):
        classification_metrics(y_true, y_pred, labels)


def test_bad_classes_and_normalize():
    with pytest.raises(ValueError, match="outside the 2 valid labels"):
        classification_report_df(Y_TRUE, Y_PRED, ["a", "b"])
    with pytest.raises(TypeError, match="list of class names"):
        confusion_matrix_df(Y_TRUE, Y_PRED, "barley")
    with pytest.raises(ValueError, match="classes is empty"):
        classification_report_df([0], [0], [])
    with pytest.raises(ValueError, match=r"normalize must be one of \(None, 'true', 'pred', 'all'\), got 'row'"):
        confusion_matrix_df(Y_TRUE, Y_PRED, CLASSES, normalize="row")


def test_check_labels_returns_arrays():
    t, p, labels = check_labels(torch.tensor([1, 0]), [0, 0], labels=[0, 1])
    assert t.dtype == p.dtype == np.int64 and labels.tolist() == [0, 1]
