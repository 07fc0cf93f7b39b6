"""Offline tests of `cropkit.data.download`: a local `file://` URL and a loopback HTTP server in a thread."""
import hashlib, os, shutil, socket, tarfile, threading, time, zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cropkit.data.download import (BASE_URL, download_breizhcrops, download_file, extract_members, official_files,
                                   official_size, official_url)

PAYLOAD = bytes(range(256)) * 400          # 102,400 bytes
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    "Routes: /file.bin (complete), /short.bin (Content-Length larger than the body), /slow.bin (stalls), /files/<path> (a folder)."
    def log_message(self, *args): pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/file.bin": return self._send(PAYLOAD)
        if self.path == "/short.bin":
            self.send_response(200); self.send_header("Content-Length", str(len(PAYLOAD))); self.end_headers()
            self.wfile.write(PAYLOAD[:1000]); self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/slow.bin":
            self.send_response(200); self.send_header("Content-Length", str(len(PAYLOAD))); self.end_headers()
            self.wfile.write(PAYLOAD[:10]); self.wfile.flush(); time.sleep(3)
            return
        if self.path.startswith("/files/"):
            f = self.server.folder/self.path[len("/files/"):]
            if f.is_file(): return self._send(f.read_bytes())
        self.send_error(404, "not here")

    def _send(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests, srv.folder, srv.daemon_threads = [], tmp_path/"served", True
    srv.folder.mkdir()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown(); srv.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_complete_http_download(server, tmp_path):
    out = download_file(f"{server.url}/file.bin", tmp_path/"d"/"f.bin", size=len(PAYLOAD), sha256=SHA256, md5=MD5,
                        progress=False)
    assert out.read_bytes() == PAYLOAD and _leftovers(tmp_path/"d") == ["f.bin"]


def test_complete_file_url_download(tmp_path):
    src = tmp_path/"src.bin"; src.write_bytes(PAYLOAD)
    assert download_file(src.as_uri(), tmp_path/"d"/"f.bin", sha256=SHA256, progress=False).read_bytes() == PAYLOAD


def test_present_file_is_not_fetched_again(server, tmp_path):
    dest = tmp_path/"f.bin"
    download_file(f"{server.url}/file.bin", dest, progress=False)
    download_file(f"{server.url}/file.bin", dest, progress=False)
    download_file(f"{server.url}/gone.bin", dest, progress=False)                 # not even asked for
    assert server.requests == ["/file.bin"]


def test_size_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(ValueError, match=rf"file\.bin has {len(PAYLOAD)} bytes, expected 5"):
        download_file(f"{server.url}/file.bin", tmp_path/"d"/"f.bin", size=5, progress=False)
    assert _leftovers(tmp_path/"d") == []


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_checksum_mismatch_leaves_no_file(server, tmp_path, kind):
    with pytest.raises(ValueError, match=rf"{kind} checksum mismatch for {server.url}/file\.bin"):
        download_file(f"{server.url}/file.bin", tmp_path/"d"/"f.bin", progress=False, **{kind: "ab" * 16})
    assert _leftovers(tmp_path/"d") == []


def test_interrupted_transfer_leaves_no_file(server, tmp_path):
    with pytest.raises(ConnectionError, match=rf"short\.bin was interrupted after 1000 of {len(PAYLOAD)} bytes"):
        download_file(f"{server.url}/short.bin", tmp_path/"d"/"f.bin", progress=False)
    assert _leftovers(tmp_path/"d") == []


def test_stalled_transfer_times_out(server, tmp_path):
    with pytest.raises(ConnectionError, match=r"slow\.bin was interrupted after \d+ bytes \(timed out\)"):
        download_file(f"{server.url}/slow.bin", tmp_path/"d"/"f.bin", progress=False, timeout=0.5)
    assert _leftovers(tmp_path/"d") == []


def test_http_error(server, tmp_path):
    with pytest.raises(ConnectionError, match=rf"HTTP 404.*{server.url}/nothing\.bin"):
        download_file(f"{server.url}/nothing.bin", tmp_path/"f.bin", progress=False)


def test_unreachable_server(tmp_path):
    with socket.socket() as s:                                          # a free port nobody listens on
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/2017/L1C/frh01.csv"
    with pytest.raises(ConnectionError, match=r"could not reach .*frh01\.csv.*offline.*by hand"):
        download_file(url, tmp_path/"frh01.csv", progress=False, timeout=2)
    assert not (tmp_path/"frh01.csv").exists()


def test_official_table():
    files = official_files()
    assert {"index", "h5", "raw_csv", "shapefile", "classmapping", "codes"} == set(files["kind"])
    assert files.loc[files.kind == "h5", "size"].notna().all()
    assert official_url("raw_csv", 2018, "L1C", "frh03") == f"{BASE_URL}/2018/L1C/frh03.zip"
    with pytest.raises(ValueError, match="'frh05'"): official_url("index", 2017, "L1C", "frh05")


def test_region_from_http_mirror(server, tmp_path):
    from cropkit.data.breizhcrops import BreizhCrops
    from cropkit.data.synthetic import make_breizhcrops
    src = make_breizhcrops(tmp_path/"src", regions="frh03", n_parcels=15, raw_csv=True, shapefile=True)
    mirror = server.folder
    (mirror/"2017"/"L1C").mkdir(parents=True); (mirror/"2017"/"shp").mkdir()
    shutil.copy(src/"2017"/"L1C"/"frh03.csv", mirror/"2017"/"L1C"/"frh03.csv")
    with tarfile.open(mirror/"2017"/"L1C"/"frh03.h5.tar.gz", "w:gz") as t:
        t.add(src/"2017"/"L1C"/"frh03.h5", arcname="data/frh03.h5")
    with tarfile.open(mirror/"2017"/"shp"/"frh03.tar.gz", "w:gz") as t:
        for f in (src/"2017").glob("frh03.*"): t.add(f, arcname=f.name)
    with zipfile.ZipFile(mirror/"2017"/"L1C"/"frh03.zip", "w") as z:
        for f in (src/"2017"/"L1C"/"frh03"/"csv").glob("*.csv"): z.write(f, arcname=f"frh03/csv/{f.name}")
    base = f"{server.url}/files"
    got = download_breizhcrops(tmp_path/"dl", "frh03", files=["index", "h5", "shapefile"], base_url=base, progress=False)
    assert got["h5"].read_bytes() == (src/"2017"/"L1C"/"frh03.h5").read_bytes()
    assert _leftovers(tmp_path/"dl"/"2017"/"L1C") == ["frh03.csv", "frh03.h5"]        # archive removed
    assert {"frh03.shp", "frh03.dbf", "frh03.shx"} <= set(_leftovers(tmp_path/"dl"/"2017"))
    n = len(server.requests)
    download_breizhcrops(tmp_path/"dl", "frh03", files=["index", "h5", "shapefile"], base_url=base, progress=False)
    assert len(server.requests) == n                                                    # nothing fetched again
    os.environ["CROPKIT_BREIZHCROPS_URL"] = base
    try:
        ds = BreizhCrops("frh03", root=tmp_path/"dl3", download=True)
        compiled = BreizhCrops("frh03", root=tmp_path/"dl4", download=True, recompile_h5_from_csv=True)
    finally: del os.environ["CROPKIT_BREIZHCROPS_URL"]
    assert ds[0][0].shape == (45, 13)
    assert "/files/2017/L1C/frh03.zip" in server.requests
    assert np.array_equal(compiled.raw_series(3), ds.raw_series(3))                    # same series via the raw CSVs
    assert (tmp_path/"dl4"/"2017"/"L1C"/"frh03"/"csv"/".complete").exists()
    n = len(server.requests)
    download_breizhcrops(tmp_path/"dl4", "frh03", files=["raw_csv"], base_url=base, progress=False)
    assert len(server.requests) == n


def test_present_h5_of_wrong_size_is_reported_not_replaced(tmp_path):
    h5 = tmp_path/"2017"/"L1C"/"frh01.h5"
    h5.parent.mkdir(parents=True); h5.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match=rf"frh01\.h5 exists but has 100 bytes, the official file {official_size('h5', 2017, 'L1C', 'frh01')}"):
        download_breizhcrops(tmp_path, "frh01", files=["h5"], progress=False)         # no network needed
    assert h5.read_bytes() == b"x" * 100


def test_damaged_archive(server, tmp_path):
    (server.folder/"2017"/"L1C").mkdir(parents=True)
    (server.folder/"2017"/"L1C"/"frh02.h5.tar.gz").write_bytes(b"\x1f\x8b garbage" * 100)
    with pytest.raises(ValueError, match=r"frh02\.h5\.tar\.gz"):
        download_breizhcrops(tmp_path, "frh02", files=["h5"], base_url=f"{server.url}/files", progress=False)
    assert _leftovers(tmp_path/"2017"/"L1C") == []                                     # archive deleted, no h5


def test_archive_member_paths_are_flattened(tmp_path):
    (tmp_path/"a.csv").write_text("x\n")
    with tarfile.open(tmp_path/"evil.tar.gz", "w:gz") as t: t.add(tmp_path/"a.csv", arcname="../../../etc/a.csv")
    out = extract_members(tmp_path/"evil.tar.gz", tmp_path/"out")
    assert out == [tmp_path/"out"/"a.csv"]


def test_cli_download(server, tmp_path, monkeypatch, capsys):
    "`cropkit train --dataset breizhcrops --download` fetches the fold's regions from the mirror into --root, then trains."
    from cropkit.cli import main
    from cropkit.data.synthetic import make_breizhcrops
    src = make_breizhcrops(tmp_path/"src", regions=("frh01", "frh02", "frh03", "frh04"), n_parcels=12, max_length=80)
    (server.folder/"2017"/"L1C").mkdir(parents=True)
    for region in ("frh01", "frh02", "frh03", "frh04"):
        shutil.copy(src/"2017"/"L1C"/f"{region}.csv", server.folder/"2017"/"L1C"/f"{region}.csv")
        with tarfile.open(server.folder/"2017"/"L1C"/f"{region}.h5.tar.gz", "w:gz") as t:
            t.add(src/"2017"/"L1C"/f"{region}.h5", arcname=f"data/{region}.h5")
    for name in ("classmapping.csv", "codes.csv"): shutil.copy(src/name, server.folder/name)
    monkeypatch.setenv("CROPKIT_BREIZHCROPS_URL", f"{server.url}/files")
    monkeypatch.chdir(tmp_path)
    args = ["train", "TempCNN", "--dataset", "breizhcrops", "--root", "bc", "--epochs", "1", "--device", "cpu", "-q"]
    assert main([*args, "--logdir", "runs/a"]) == 2                                     # no root and no --download
    err = capsys.readouterr().err
    assert "--root bc does not exist. Pass --download" in err and not (tmp_path/"runs").exists()
    assert main([*args, "--logdir", "runs/b", "--download"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path/"bc"/"2017"/"L1C").iterdir()) == sorted(
        f"{r}.{s}" for r in ("frh01", "frh02", "frh03", "frh04") for s in ("csv", "h5"))
    assert (tmp_path/"bc"/"classmapping.csv").read_bytes() == (src/"classmapping.csv").read_bytes()
    assert (tmp_path/"runs"/"b"/"results.json").exists()
    n = len(server.requests)
    assert main([*args, "--logdir", "runs/c", "--download"]) == 0                       # all there: nothing fetched again
    assert len(server.requests) == n
    (tmp_path/"bc"/"2017"/"L1C"/"frh04.h5").unlink()
    assert main([*args, "--logdir", "runs/d"]) == 2                                     # a region's file missing
    assert "pass --download" in capsys.readouterr().err and not (tmp_path/"runs"/"d").exists()
