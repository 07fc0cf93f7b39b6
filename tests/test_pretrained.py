"""Published BreizhCrops weights (`cropkit.models.pretrained`), offline: a loopback HTTP server serves checkpoints
written exactly as the reference package's models save them (`torch.save({"model_state": state_dict})`), whole,
truncated, cut off mid-transfer or corrupted. The reference package `breizhcrops` builds those checkpoints.
"""
import hashlib, io, re, threading, urllib.parse, warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

bcm = pytest.importorskip("breizhcrops.models", reason="the reference package `breizhcrops` is not installed "
                          "(pip install --no-deps breizhcrops==0.0.4.1)")

from cropkit.models import load_pretrained
from cropkit.models.pretrained import PRETRAINED, pretrained_file, pretrained_url


def reference_model(name: str) -> torch.nn.Module:
    "The reference model built as the reference's pretrained.py builds it (13 bands, 9 classes, 45 steps), random weights."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"OmniScaleCNN": lambda: bcm.OmniScaleCNN(input_dim=13, num_classes=9, sequencelength=45),
                "LSTM": lambda: bcm.LSTM(input_dim=13, num_classes=9),
                "StarRNN": lambda: bcm.StarRNN(input_dim=13, num_classes=9, bidirectional=False, use_batchnorm=False,
                                               use_layernorm=True),
                "MSResNet": lambda: bcm.MSResNet(input_dim=13, num_classes=9),
                "TransformerEncoder": lambda: bcm.TransformerModel(input_dim=13, num_classes=9),
                "TempCNN": lambda: bcm.TempCNN(input_dim=13, num_classes=9, sequencelength=45)}[name]().eval()


def checkpoint_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({"model_state": model.state_dict(), "epoch": 7}, buf)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    "/<mode>/<path>: mode good (honours Range), truncated (a short file), corrupt (same size, garbage), cut (stops midway)."
    def log_message(self, *args): pass

    def do_GET(self):
        mode, _, rel = self.path.lstrip("/").partition("/")
        body = self.server.files.get(urllib.parse.unquote(rel))
        self.server.requests.append((mode, self.headers.get("Range")))
        if body is None: return self.send_error(404, "not here")
        if mode == "truncated": body = body[: len(body) // 2]
        if mode == "corrupt": body = bytes(b ^ 0x5A for b in body)
        start = 0
        if mode == "good" and (m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")):
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start)); self.end_headers()
        if mode == "cut":
            self.wfile.write(body[:1000]); self.wfile.flush(); self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.daemon_threads = {}, [], True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown(); srv.server_close()


def serve(server, name: str, seed: int = 0):
    "Put a reference-format checkpoint of model `name` on the server; return (reference model, file bytes)."
    torch.manual_seed(seed)
    model = reference_model(name)
    body = checkpoint_bytes(model)
    server.files[urllib.parse.unquote(PRETRAINED[name]["path"])] = body
    return model, body


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_every_published_model_computes_what_the_reference_computes(server, tmp_path, name):
    reference, body = serve(server, name)
    model = load_pretrained(name.lower(), device="cpu", cache_dir=tmp_path, base_url=f"{server.url}/good", progress=False)
    assert not model.training
    x = torch.randn(3, 45, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)
    path = tmp_path / urllib.parse.unquote(PRETRAINED[name]["path"]).rsplit("/", 1)[1]
    assert path.read_bytes() == body and files(tmp_path) == sorted([path.name, "checksums.json"])
    assert model.cropkit_spec["pretrained"] == pretrained_url(name, f"{server.url}/good")


def test_cached_weights_are_never_fetched_again_and_work_offline(server, tmp_path):
    serve(server, "TempCNN")
    base = f"{server.url}/good"
    first = pretrained_file("TempCNN", cache_dir=tmp_path, base_url=base, progress=False)
    assert server.requests == [("good", None)]
    server.shutdown(); server.server_close()                     # offline from here on
    assert pretrained_file("tempcnn", cache_dir=tmp_path, base_url=base) == first
    load_pretrained("TempCNN", cache_dir=tmp_path, base_url=base)
    assert server.requests == [("good", None)]


def test_interrupted_download_resumes(server, tmp_path):
    _, body = serve(server, "MSResNet")
    with pytest.raises(ConnectionError, match=r"interrupted after 1000 of \d+ bytes.*kept in .*\.download\.part.*resume"):
        pretrained_file("MSResNet", cache_dir=tmp_path, base_url=f"{server.url}/cut", progress=False)
    final = tmp_path / urllib.parse.unquote(PRETRAINED["MSResNet"]["path"]).rsplit("/", 1)[1]
    assert files(tmp_path) == [final.name + ".download.part"]   # nothing under the final name
    assert (tmp_path / (final.name + ".download.part")).read_bytes() == body[:1000]
    assert pretrained_file("MSResNet", cache_dir=tmp_path, base_url=f"{server.url}/good", progress=False) == final
    assert server.requests[-1] == ("good", "bytes=1000-")         # only the rest was asked for
    assert final.read_bytes() == body and files(tmp_path) == sorted([final.name, "checksums.json"])


@pytest.mark.parametrize("mode", ["truncated", "corrupt"])
def test_bad_file_is_discarded(server, tmp_path, mode):
    serve(server, "LSTM")
    with pytest.raises(ValueError, match=r"not a usable BreizhCrops LSTM checkpoint; it was discarded"):
        pretrained_file("LSTM", cache_dir=tmp_path, base_url=f"{server.url}/{mode}", progress=False)
    assert files(tmp_path) == []


def test_changed_cached_file_is_refused_with_both_hashes(server, tmp_path):
    _, body = serve(server, "TempCNN")
    path = pretrained_file("TempCNN", cache_dir=tmp_path, base_url=f"{server.url}/good", progress=False)
    damaged = body[:500] + bytes(b ^ 0xFF for b in body[500:508]) + body[508:]
    path.write_bytes(damaged)
    good, bad = hashlib.sha256(body).hexdigest(), hashlib.sha256(damaged).hexdigest()
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} .*sha256 {bad} .*recorded {good}.*delete the file"):
        load_pretrained("TempCNN", cache_dir=tmp_path, base_url=f"{server.url}/good")
    assert len(server.requests) == 1                               # refused, not silently replaced


def test_file_placed_by_hand_is_verified_once(server, tmp_path):
    _, body = serve(server, "TempCNN")
    path = tmp_path / urllib.parse.unquote(PRETRAINED["TempCNN"]["path"]).rsplit("/", 1)[1]
    path.write_bytes(body[: len(body) // 3])
    with pytest.raises(ValueError, match=r"is not a usable TempCNN checkpoint.*delete it"):
        pretrained_file("TempCNN", cache_dir=tmp_path, base_url=f"{server.url}/good")
    path.write_bytes(body)
    assert pretrained_file("TempCNN", cache_dir=tmp_path, base_url=f"{server.url}/good") == path
    assert server.requests == [] and "checksums.json" in files(tmp_path)


def test_unknown_model_lists_the_models_with_weights(tmp_path):
    for bad in ("InceptionTime", "PETransformerModel", "ResNet50"):
        with pytest.raises(ValueError, match=rf"no published BreizhCrops weights for model '{bad}'; models with weights: "
                                             "OmniScaleCNN, LSTM, StarRNN, MSResNet, TransformerEncoder, TempCNN"):
            load_pretrained(bad, cache_dir=tmp_path)
    assert files(tmp_path) == []


def test_missing_file_on_the_server_leaves_nothing(server, tmp_path):
    with pytest.raises(ConnectionError, match="HTTP 404"):
        pretrained_file("StarRNN", cache_dir=tmp_path, base_url=f"{server.url}/good", progress=False)
    assert files(tmp_path) == []
