"""`cropkit.compat.breizhcrops` against the reference package `breizhcrops` (0.0.4.1) itself, offline.

Both read the same generated root (the reference only with `load_timeseries=False`: it would download an h5
database whose size is not the official one); models and checkpoints come from the reference's classes; the
published weights come from a loopback HTTP server standing in for the bucket.
"""
import shutil, threading, urllib.parse, warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

bc = pytest.importorskip("breizhcrops", reason="the reference package `breizhcrops` is not installed "
                         "(pip install --no-deps breizhcrops==0.0.4.1)")
import breizhcrops.datasets.urls as ref_urls  # noqa: E402

import cropkit.compat.breizhcrops as compat  # noqa: E402
from cropkit.compat.breizhcrops import get_model  # noqa: E402
from cropkit.compat.breizhcrops.datasets import urls  # noqa: E402
from cropkit.data.synthetic import make_breizhcrops  # noqa: E402
from cropkit.models.pretrained import PRETRAINED  # noqa: E402

REFERENCE_COLUMNS = sorted(['CODE_CULTU', 'path', 'meanCLD', 'sequencelength', 'id', 'classid', 'classname', 'region'])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("bzh")
    for level in ("L1C", "L2A"):
        make_breizhcrops(base / "ours", regions=["frh01", "belle-ile"], level=level, n_parcels=40, min_length=20,
                         max_length=40)
    shutil.copytree(base / "ours", base / "reference")   # the reference rewrites its index file
    return base


@pytest.mark.parametrize("level", ["L1C", "L2A"])
@pytest.mark.parametrize("region", ["frh01", "belle-ile"])
def test_dataset_attributes_mean_what_they_mean_in_the_reference(root, region, level):
    ref = bc.BreizhCrops(region, root=str(root / "reference"), level=level, load_timeseries=False)
    ours = compat.BreizhCrops(region, root=root / "ours", level=level)
    np.testing.assert_array_equal(ours.classes, ref.classes)
    np.testing.assert_array_equal(ours.classname, ref.classname)
    np.testing.assert_array_equal(ours.klassenname, ref.klassenname)
    assert ours.nclasses == ref.nclasses
    assert sorted(ours.index.columns) == sorted(ref.index.columns) == REFERENCE_COLUMNS
    assert len(ours) == len(ref)
    assert ours.index["id"].tolist() == ref.index["id"].tolist()
    assert ours.index["classname"].tolist() == ref.index["classname"].tolist()
    X, y, field_id = ours[0]
    assert int(y) in ours.classes and X.shape == (45, 13 if level == "L1C" else 10)
    assert ours.classname[int(y)] == ours.index["classname"].iloc[0]
    assert list(ours.get_codes().columns) == list(ref.get_codes().columns)


def test_native_dataset_keeps_its_clearer_names(root):
    from cropkit.data.breizhcrops import BreizhCrops
    native = BreizhCrops("frh01", root=root / "ours")
    ours = compat.BreizhCrops("frh01", root=root / "ours")
    assert native.classes == list(ours.classname) and "cropname" in native.index.columns
    assert ours.to_packed().classes == native.classes                     # cropkit's own machinery gets names


def test_missing_files_are_downloaded_as_the_reference_does(tmp_path, monkeypatch):
    "An absent index triggers a download (from $CROPKIT_BREIZHCROPS_URL here), as in the reference."
    mirror = make_breizhcrops(tmp_path / "mirror", regions=["belle-ile"], n_parcels=20, min_length=20, max_length=30)
    monkeypatch.setenv("CROPKIT_BREIZHCROPS_URL", mirror.as_uri())
    ds = compat.BreizhCrops("belle-ile", root=tmp_path / "fresh", load_timeseries=False)
    assert (tmp_path / "fresh" / "2017" / "L1C" / "belle-ile.csv").is_file()
    assert len(ds) == len(compat.BreizhCrops("belle-ile", root=mirror, load_timeseries=False)) > 0


def test_url_tables_equal_the_reference():
    for name in ("CODESURL", "CLASSMAPPINGURL", "CLASSMAPPINGURL_ICML", "INDEX_FILE_URLs", "SHP_URLs", "H5_URLs",
                 "RAW_CSV_URL"):
        assert getattr(urls, name) == getattr(ref_urls, name), name
    assert urls.FILESIZES == {2017: ref_urls.FILESIZES[2017]}       # no 2018 h5 database is published


@pytest.mark.parametrize("name", ["TempCNN", "StarRNN", "LSTM", "TransformerEncoder", "InceptionTime", "MSResNet",
                                  "OmniScaleCNN", "petransformer"])
def test_get_model_as_in_train_py(name):
    for ndims, num_classes, length in [(12, 10, 20), (13, 20, 45)]:
        model = get_model(name.lower(), ndims, num_classes, length, torch.device("cpu")).eval()
        with torch.no_grad(): out = model(torch.zeros(4, length, ndims))
        assert out.shape == (4, num_classes)
        torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="invalid model argument 'ResNet'"):
        get_model("ResNet", 13, 9, 45, "cpu")


REF_BUILD = {
    "TempCNN": lambda: bc.models.TempCNN(input_dim=13, num_classes=9, sequencelength=45, hidden_dims=16),
    "LSTM": lambda: bc.models.LSTM(input_dim=13, num_classes=9, hidden_dims=16, num_layers=2),
    "TransformerModel": lambda: bc.models.TransformerModel(input_dim=13, num_classes=9, d_model=32, n_layers=2),
    "MSResNet": lambda: bc.models.MSResNet(input_dim=13, num_classes=9, hidden_dims=8),
    "StarRNN": lambda: bc.models.StarRNN(input_dim=13, num_classes=9, hidden_dims=16),
    "OmniScaleCNN": lambda: bc.models.OmniScaleCNN(input_dim=13, num_classes=9, sequencelength=45),
}
OUR_BUILD = {
    "TempCNN": lambda: compat.models.TempCNN(input_dim=13, num_classes=9, sequencelength=45, hidden_dims=16),
    "LSTM": lambda: compat.models.LSTM(input_dim=13, num_classes=9, hidden_dims=16, num_layers=2),
    "TransformerModel": lambda: compat.models.TransformerModel(input_dim=13, num_classes=9, d_model=32, n_layers=2),
    "MSResNet": lambda: compat.models.MSResNet(input_dim=13, num_classes=9, hidden_dims=8),
    "StarRNN": lambda: compat.models.StarRNN(input_dim=13, num_classes=9, hidden_dims=16, device="cpu"),
    "OmniScaleCNN": lambda: compat.models.OmniScaleCNN(input_dim=13, num_classes=9, sequencelength=45),
}


@pytest.mark.parametrize("name", list(REF_BUILD))
def test_reference_checkpoint_loads_with_load_state_dict(name, tmp_path):
    "`model.load_state_dict(torch.load(path)['model_state'])`, as reference scripts do, on the compat classes."
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = REF_BUILD[name]().eval()
    torch.save({"model_state": ref.state_dict()}, tmp_path / "model.pth")
    ours = OUR_BUILD[name]()
    ours.load_state_dict(torch.load(tmp_path / "model.pth", map_location="cpu")["model_state"])
    x = torch.randn(3, 45, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


def test_inceptiontime_takes_the_reference_constructor():
    model = compat.models.InceptionTime(7, input_dim=13, num_layers=2, hidden_dims=16, device=torch.device("cpu"))
    with torch.no_grad(): assert model.eval()(torch.zeros(2, 30, 13)).shape == (2, 7)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    "A loopback HTTP server over a folder standing in for the bucket; an empty cache; both set in the environment."
    folder = tmp_path / "bucket"
    folder.mkdir()
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CROPKIT_BREIZHCROPS_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    yield folder
    server.shutdown(); server.server_close()


@pytest.mark.parametrize("name", ["tempcnn", "transformer", "msresnet"])
def test_pretrained_as_in_the_reference(bucket, name):
    key = {"tempcnn": "TempCNN", "transformer": "TransformerEncoder", "msresnet": "MSResNet"}[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {"TempCNN": lambda: bc.models.TempCNN(input_dim=13, num_classes=9, sequencelength=45),
               "TransformerEncoder": lambda: bc.models.TransformerModel(input_dim=13, num_classes=9),
               "MSResNet": lambda: bc.models.MSResNet(input_dim=13, num_classes=9)}[key]().eval()
    target = bucket / urllib.parse.unquote(PRETRAINED[key]["path"])
    target.parent.mkdir(parents=True)
    torch.save({"model_state": ref.state_dict()}, target)
    model = compat.models.pretrained(name)                      # the reference's call, default device cpu
    x = torch.rand(2, 45, 13, generator=torch.Generator().manual_seed(3))   # 2: the reference MSResNet squeezes a batch of 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="models with weights: OmniScaleCNN, LSTM"):
        compat.models.pretrained("inceptiontime")
