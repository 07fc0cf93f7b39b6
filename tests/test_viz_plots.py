"""Bad input, optional-dependency and integration tests of cropkit.viz.curves and cropkit.viz.confusion."""
import builtins
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cropkit.core import data_path
from cropkit.data.labelled import parcels_to_xarray
from cropkit.viz import confusion as vc
from cropkit.viz import curves as cv
from cropkit.viz.maps import save

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def parcels():
    "12 parcels × 6 dates × 4 bands, 3 classes, with a shared date axis."
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.5, size=(12, 6, 4)).astype(np.float32)
    dates = pd.date_range("2017-03-01", periods=6, freq="20D")
    return parcels_to_xarray(x, ["B3", "B4", "B8", "B11"], ids=np.arange(12), labels=np.arange(12) % 3,
                             classes=["wheat", "maize", "rapeseed"], dates=dates.values)


# --- bad input -----------------------------------------------------------------------------------------

def test_unknown_band_or_index_names_the_valid_ones(parcels):
    with pytest.raises(KeyError, match=r"'evi'.*'B3', 'B4', 'B8', 'B11'.*'ndvi'"):
        cv.plot_class_profiles(parcels, "evi")
    with pytest.raises(KeyError, match=r"'B12'.*'B3', 'B4'"):
        cv.plot_parcel(parcels.isel(parcel=0), bands=["B4", "B12"])
    with pytest.raises(KeyError, match=r"NDRE = \(B8A − B5\).*needs band\(s\) \['B8A', 'B5'\]"):
        cv.plot_class_profiles(parcels, "ndre")


def test_unknown_class_and_bad_quantiles(parcels):
    with pytest.raises(KeyError, match=r"'rice'.*\['wheat', 'maize', 'rapeseed'\]"):
        cv.plot_class_profiles(parcels, "ndvi", classes=["wheat", "rice"])
    with pytest.raises(ValueError, match="quantiles"):
        cv.plot_class_profiles(parcels, "ndvi", quantiles=(0.1,))
    with pytest.raises(ValueError, match="0 <= low < 0.5 < high <= 1"):
        cv.plot_class_profiles(parcels, "ndvi", quantiles=(0.6, 0.9))


def test_profiles_need_labels_and_data():
    da = parcels_to_xarray(np.ones((2, 3, 2)), ["B4", "B8"], ids=[1, 2])
    with pytest.raises(ValueError, match="no 'classname' or 'label' coordinate"):
        cv.plot_class_profiles(da, "ndvi")
    with pytest.raises(ValueError, match="empty"):
        cv.class_profiles(da.isel(parcel=[]), "ndvi")
    with pytest.raises(ValueError, match=r"\(parcel, time, band\) DataArray"):
        cv.class_profiles(np.ones((2, 3, 2)), "ndvi")


def test_all_nan_values_are_refused():
    da = parcels_to_xarray(np.full((2, 3, 2), np.nan), ["B4", "B8"], ids=[1, 2], labels=[0, 0], classes=["a"],
                           allow_nan=True)
    with pytest.raises(ValueError, match="no valid"):
        cv.class_profiles(da, "B8")
    with pytest.raises(ValueError, match="only NaN"):
        cv.plot_parcel(da.isel(parcel=0))


def test_parcel_mismatched_lengths_and_shapes():
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="3 bands \\(columns\\) but 2 band names"):
        cv.plot_parcel(x, band_names=["B4", "B8"])
    with pytest.raises(ValueError, match="4 dates were given for a series of 5"):
        cv.plot_parcel(x, dates=pd.date_range("2020-01-01", periods=4))
    with pytest.raises(ValueError, match="2-D"):
        cv.plot_parcel(np.ones((2, 5, 3)))
    with pytest.raises(ValueError, match="empty"):
        cv.plot_parcel(np.ones((0, 3)))
    with pytest.raises(ValueError, match="bands is empty"):
        cv.plot_parcel(x, bands=[])


def test_spectra_bad_input():
    cube = np.random.default_rng(0).integers(1, 5000, size=(10, 4, 4)).astype(np.int16)
    wl = np.linspace(400, 2400, 10)
    with pytest.raises(ValueError, match="10 bands but 9 wavelengths"):
        cv.plot_spectra(cube, wl[:-1])
    with pytest.raises(ValueError, match="3-D"):
        cv.plot_spectra(cube[0], wl)
    with pytest.raises(ValueError, match="empty"):
        cv.plot_spectra(cube[:, :0], wl)
    with pytest.raises(ValueError, match=r"expected the cube's \(4, 4\) or 3× finer \(12, 12\)"):
        cv.plot_spectra(cube, wl, label_map=np.zeros((5, 5), int))
    with pytest.raises(ValueError, match="one level"):
        cv.plot_spectra(cube, wl, label_map=np.zeros((4, 12, 12), int))
    with pytest.raises(ValueError, match="no valid pixels"):
        cv.plot_spectra(np.zeros_like(cube), wl)
    with pytest.raises(TypeError, match="integer class ids"):
        cv.downsample_mode(np.zeros((6, 6)))


def test_history_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.csv"):
        cv.plot_history(tmp_path)
    (tmp_path / "history.csv").write_text("")
    with pytest.raises(ValueError, match="cannot read"):
        cv.plot_history(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,train_loss\n")
    with pytest.raises(ValueError, match="empty"):
        cv.plot_history(tmp_path / "history.csv")
    with pytest.raises(ValueError, match="no 'epoch' column"):
        cv.plot_history(pd.DataFrame({"loss": [1.0]}))
    with pytest.raises(ValueError, match="mode"):
        cv.best_epoch(pd.DataFrame({"epoch": [1], "train_loss": [1.0]}), mode="lowest")


def test_per_class_f1_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        cv.plot_per_class_f1([0, 1, 1], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="y_pred and classes are needed"):
        cv.plot_per_class_f1([0, 1, 1])
    with pytest.raises(ValueError, match="sort"):
        cv.plot_per_class_f1([0, 1], [0, 1], ["a", "b"], sort="f1")
    with pytest.raises(ValueError, match="y_true is empty"):
        cv.plot_per_class_f1([], [], ["a", "b"])


def test_confusion_bad_input():
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        vc.plot_confusion([0, 1, 1], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="y_true is empty"):
        vc.plot_confusion([], [], ["a", "b"])
    with pytest.raises(ValueError, match=r"outside the 2 valid labels"):
        vc.plot_confusion([0, 1, 2], [0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="3 groups were given for 2 classes"):
        vc.plot_confusion([0, 1], [0, 1], ["a", "b"], groups=["x", "y", "z"])
    with pytest.raises(KeyError, match=r"no group for class\(es\) \['b'\]"):
        vc.plot_confusion([0, 1], [0, 1], ["a", "b"], groups={"a": "x"})
    with pytest.raises(ValueError, match="normalize"):
        vc.plot_confusion([0, 1], [0, 1], ["a", "b"], normalize="row")
    with pytest.raises(ValueError, match="gamma"):
        vc.plot_confusion([0, 1], [0, 1], ["a", "b"], gamma=0)
    with pytest.raises(ValueError, match="same classes"):
        vc.plot_confusion_matrix(pd.DataFrame(np.eye(2), index=["a", "b"], columns=["b", "a"]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        vc.plot_confusion_matrix(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_hierarchical_bad_input():
    from cropkit.data.h2crop import default_taxonomy
    tax = default_taxonomy()
    t = np.array([[1, 2], [3, 0]])
    with pytest.raises(ValueError, match="levels must be distinct values"):
        vc.plot_hierarchical_confusion((t, t), tax, levels=(0, 1), level_axis=None)
    with pytest.raises(ValueError, match="group_level"):
        vc.plot_hierarchical_confusion((t, t), tax, levels=(2,), level_axis=None, group_level=3)
    with pytest.raises(ValueError, match="no pixel left"):
        vc.hierarchical_confusion(np.zeros((2, 2), int), np.zeros((2, 2), int), tax, level_axis=None)
    with pytest.raises(TypeError, match="level-4 ids must be integers"):
        vc.hierarchical_confusion(t.astype(float), t.astype(float), tax, level_axis=None)


def test_unknown_backend(parcels):
    for call in (lambda: cv.plot_class_profiles(parcels, backend="plotly"),
                 lambda: vc.plot_confusion([0, 1], [0, 1], ["a", "b"], backend="bokeh")):
        with pytest.raises(ValueError, match="'matplotlib' or 'holoviews'"):
            call()


# --- optional dependencies -------------------------------------------------------------------------------

@pytest.fixture
def no_holoviews(monkeypatch):
    "Make `import holoviews` (and its submodules) fail as if the package were not installed."
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "holoviews" or name.startswith("holoviews."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in list(sys.modules) if m == "holoviews" or m.startswith("holoviews.")]:
        monkeypatch.delitem(sys.modules, mod)
    # a None entry makes importlib.import_module fail too, even when an earlier test imported holoviews
    monkeypatch.setitem(sys.modules, "holoviews", None)


def test_holoviews_missing_gives_clear_message(no_holoviews, parcels):
    calls = [lambda: cv.plot_class_profiles(parcels, backend="holoviews"),
             lambda: cv.plot_parcel(parcels.isel(parcel=0), backend="holoviews"),
             lambda: cv.plot_spectra(np.ones((3, 2, 2)), [400, 500, 600], backend="holoviews"),
             lambda: vc.plot_confusion([0, 1], [0, 1], ["a", "b"], backend="holoviews")]
    for call in calls:
        with pytest.raises(ImportError, match=r"holoviews.*pip install \"cropkit\[viz\]\""):
            call()
    # the matplotlib backend keeps working without holoviews
    assert isinstance(cv.plot_class_profiles(parcels), matplotlib.figure.Figure)


# --- integration: real data, other cropkit modules, saving ---------------------------------------------------

def test_every_plot_saves_to_png_and_html(tmp_path, parcels):
    figs = {"parcel": cv.plot_parcel(parcels.isel(parcel=0), bands=["B4", "B8", "ndvi"]),
            "profiles": cv.plot_class_profiles(parcels, "ndvi"),
            "facet": cv.plot_class_profiles(parcels, "B8", facet=True),
            "spectra": cv.plot_spectra(np.random.default_rng(0).uniform(0.01, 0.5, (20, 3, 3)), np.linspace(400, 2400, 20)),
            "f1": cv.plot_per_class_f1([0, 1, 2, 2], [0, 2, 2, 2], ["a", "b", "c"]),
            "cm": vc.plot_confusion([0, 1, 2, 2], [0, 2, 2, 2], ["a", "b", "c"], groups=["x", "x", "y"])}
    for name, fig in figs.items():
        png = save(fig, tmp_path / f"{name}.png", dpi=40)
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000, name
    hv_objs = {"profiles": cv.plot_class_profiles(parcels, "ndvi", backend="holoviews"),
               "parcel": cv.plot_parcel(parcels.isel(parcel=0), bands=["B4", "ndvi"], backend="holoviews"),
               "cm": vc.plot_confusion([0, 1, 2, 2], [0, 2, 2, 2], ["a", "b", "c"], backend="holoviews")}
    for name, obj in hv_objs.items():
        html = save(obj, tmp_path / f"{name}.html").read_text()
        assert "Bokeh" in html and len(html) > 10000, name


def test_profiles_follow_shared_dates(parcels):
    fig = cv.plot_class_profiles(parcels, "B8", quantiles=(0.25, 0.75))
    ax = fig.axes[0]
    wheat = parcels.sel(band="B8").values[parcels.label.values == 0]
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), np.median(wheat, axis=0), rtol=1e-6)
    assert ax.get_xlabel() == "date"
    assert len(line.get_xdata()) == 6


def test_history_of_a_real_training_run(tmp_path):
    "plot_history reads what cropkit.train.Learner writes."
    torch = pytest.importorskip("torch")
    from cropkit.train import fit
    from cropkit.data.victoria import victoria
    train, test = victoria()
    sub = torch.utils.data.Subset
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(73 * 10, 8), torch.nn.LogSoftmax(-1))
    fit(model, sub(train, range(0, 400, 10)), sub(test, range(0, 400, 10)), epochs=3, logdir=tmp_path,
        progress=False, device="cpu", batch_size=16)
    fig = cv.plot_history(tmp_path)
    epoch, value, column = cv.best_epoch(tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    assert column == "valid_loss" and value == history["valid_loss"].min()
    assert len(fig.axes) >= 2
    assert [l.get_label() for l in fig.axes[1].get_lines()][:3] == ["valid accuracy", "valid kappa", "valid f1 macro"]
    marks = [l for ax in fig.axes for l in ax.get_lines() if l.get_gid() == "best_epoch"]
    assert {l.get_xdata()[0] for l in marks} == {epoch}


def test_h2crop_tile_spectra_and_hierarchy():
    "A synthetic H2Crop tile: EnMAP spectra per level-4 class (labels at S2 resolution), per-level matrices."
    from cropkit.data.h2crop import default_taxonomy
    from cropkit.data.h2crop_synthetic import SpectralTables, make_sample
    tax = default_taxonomy()
    sample = make_sample(48, np.random.default_rng(0), SpectralTables(tax, "real"), tax)
    wl = np.load(data_path("enmap_potsdam", "derived_enmap_wavelengths_218.npy"))
    label4 = sample["label"][3]
    fig = cv.plot_spectra(sample["EnMAP"], wl, label4, tax.names(4), colors=tax.colors(4), ignore_index=0, max_classes=5)
    stats = cv.class_spectra(sample["EnMAP"], wl, label4, tax.names(4), ignore_index=0)
    assert "background" not in stats["class"].values.tolist()
    assert len([l for l in fig.axes[0].get_lines() if not l.get_label().startswith("_")]) == min(5, len(stats["class"]))
    pred = sample["priors"]                                          # the prior maps as a stand-in prediction
    cms = vc.hierarchical_confusion(sample["label"], pred, tax)
    assert [int(cms[l].to_numpy().sum()) for l in (1, 2, 3, 4)] == [int((sample["label"][0] != 0).sum())] * 4
    fig = vc.plot_hierarchical_confusion((sample["label"], pred), tax, levels=(2, 4))
    assert len([a for a in fig.axes if a.images]) == 2
