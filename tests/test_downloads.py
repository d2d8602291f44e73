"""The real download code of course.data.external, run against a loopback HTTP server that serves offline-twin archives.

Every test points COURSE_DATA at a temporary folder and COURSE_DATA_MIRROR at the server, so the registry's
real URLs are rewritten to 127.0.0.1. Nothing here touches ~/.course or the internet.
"""
import dataclasses
import hashlib
import io
import os
import shutil
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from course.data import external as datasets
from course.data.external import (URLs, untar_data, DownloadError, ChecksumError, UnsafeArchiveError, KaggleCredentialsError)

MNIST_PATH = "/fast-ai-sample/mnist_sample.tgz"


# ---------------------------------------------------------------- the loopback server
class Server:
    "Routes: path -> (kind, payload). Kinds: file, truncate (always), truncate_once, stall, redirect, slow. Counts requests."

    def __init__(self):
        self.routes, self.hits, self.ranges = {}, {}, []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client never holds a server thread for long

            def log_message(self, *args): pass

            def do_GET(self):
                path = self.path
                server.hits[path] = server.hits.get(path, 0) + 1
                kind, payload = server.routes.get(path, ("404", None))
                if kind == "404":
                    self.send_error(404); return
                if kind == "redirect":
                    self.send_response(302); self.send_header("Location", payload); self.send_header("Content-Length", "0"); self.end_headers(); return
                if kind == "stall":  # accept the request, then say nothing until the client gives up
                    server.stop.wait(payload); return
                data = payload
                start = 0
                rng = self.headers.get("Range")
                if rng and kind in ("file", "truncate_once", "slow"):
                    server.ranges.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if kind == "truncate" or (kind == "truncate_once" and server.hits[path] == 1):
                    self.wfile.write(body[: len(body) // 2]); self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "slow":  # send in pieces, so that a second caller arrives mid-download
                    for i in range(0, len(body), len(body) // 5 + 1):
                        self.wfile.write(body[i:i + len(body) // 5 + 1]); self.wfile.flush(); time.sleep(0.1)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.deadline = threading.Timer(120, self.close)  # bounded: stops by itself even if a test hangs
        self.deadline.daemon = True
        self.deadline.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.deadline.cancel()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    "A fresh course home and data cache, online mode, downloads going to the loopback server."
    monkeypatch.setenv("COURSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_OFFLINE", "0")
    monkeypatch.setenv("COURSE_DATA_MIRROR", server.url)
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    return tmp_path


# ---------------------------------------------------------------- archives to serve
_TGZ = {}


def mnist_tgz() -> bytes:
    "The MNIST-sample twin as a .tgz with its top folder, like the real archive (built once per test session)."
    if "mnist" not in _TGZ:
        import tempfile
        from course.data.twins.vision import make_mnist_sample
        with tempfile.TemporaryDirectory() as d:
            root = make_mnist_sample(Path(d))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tf: tf.add(root, arcname="mnist_sample")
            _TGZ["mnist"] = buf.getvalue()
    return _TGZ["mnist"]


def register(monkeypatch, url, data: bytes, **changes):
    "Make the registry's size and checksum for `url` those of `data` (the mirror serves twins, not the real files)."
    info = datasets.DATASETS[url]
    fields = {"size": len(data), "md5_head": hashlib.md5(data[: 2**20]).hexdigest(), **changes}
    new = dataclasses.replace(info, **fields)
    monkeypatch.setitem(datasets.DATASETS, url, new)


def evil_tgz(entries) -> bytes:
    "A .tgz from (name, kind, data) entries: kind file, sym (data = target) or link (hard link)."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
            else:
                ti.type, ti.linkname = (tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE), data; tf.addfile(ti)
    return buf.getvalue()


def cache(env) -> Path: return env / "cache"


def leftovers(env) -> list:
    "Files a failed download must not leave: final-looking archives, partial folders, unpacking folders."
    c = cache(env)
    return [p for p in c.rglob("*") if p.is_file() and p.parent.name == "archive" and not p.name.endswith(".part")] + \
           [p for p in c.glob(".*unpacking*")] + [p for p in c.glob("mnist_sample")]


# ---------------------------------------------------------------- the tests
def test_good_download_then_cache_without_network(env, server, monkeypatch, capsys):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("file", data)
    path = untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert path == cache(env) / "mnist_sample"
    assert (path / "labels.csv").is_file() and len(list((path / "train" / "3").glob("*.png"))) > 100
    assert (cache(env) / "archive" / "mnist_sample.tgz").read_bytes() == data
    assert not list(cache(env).rglob("*.part")) and not list(cache(env).glob(".*unpacking*"))
    assert server.hits[MNIST_PATH] == 1
    # a re-run uses the cache: no request at all, even with the network gone
    monkeypatch.setenv("COURSE_DATA_MIRROR", "http://127.0.0.1:9")
    def no_network(*a, **k): raise AssertionError("the network was used")
    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    assert untar_data(URLs.MNIST_SAMPLE, progress=False) == path
    assert untar_data("MNIST_SAMPLE", progress=False) == path
    assert server.hits[MNIST_PATH] == 1


def test_checksum_mismatch_deletes_and_says_so(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data, md5_head="0" * 32)
    server.routes[MNIST_PATH] = ("file", data)
    with pytest.raises(ChecksumError, match="deleted") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert "COURSE_OFFLINE=1" in str(e.value)
    assert not list(cache(env).rglob("*.tgz*")) and not leftovers(env)
    # a wrong size is caught too
    register(monkeypatch, URLs.MNIST_SAMPLE, data, size=len(data) + 1)
    with pytest.raises(ChecksumError, match="size"):
        untar_data(URLs.MNIST_SAMPLE, progress=False, retries=0)
    assert not leftovers(env)


def test_truncated_body_fails_cleanly(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("truncate", data)
    with pytest.raises(DownloadError, match="broke|received") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False, retries=1, timeout=2)
    assert "try again" in str(e.value)
    assert server.hits[MNIST_PATH] >= 2  # it retried
    assert not leftovers(env)  # only a .part may remain, which never looks complete


def test_truncated_once_resumes(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("truncate_once", data)
    path = untar_data(URLs.MNIST_SAMPLE, progress=False, retries=2, timeout=2)
    assert (path / "labels.csv").is_file()
    assert server.ranges and server.ranges[0].startswith("bytes=")  # the second request asked for the rest only
    assert (cache(env) / "archive" / "mnist_sample.tgz").read_bytes() == data


def test_404_says_what_to_do(env, server, monkeypatch):
    register(monkeypatch, URLs.MNIST_SAMPLE, b"x")
    with pytest.raises(DownloadError, match="404") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    msg = str(e.value)
    assert "COURSE_OFFLINE=1" in msg and "COURSE_DATA_MIRROR" in msg and "mnist_sample.tgz" in msg
    assert not leftovers(env)


def test_stalled_server_times_out(env, server, monkeypatch):
    register(monkeypatch, URLs.MNIST_SAMPLE, mnist_tgz())
    server.routes[MNIST_PATH] = ("stall", 30)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False, timeout=1, retries=0)
    assert time.monotonic() - start < 8
    assert "COURSE_OFFLINE=1" in str(e.value)
    assert not leftovers(env)


def test_redirect_is_followed(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("redirect", "/moved/mnist_sample.tgz")
    server.routes["/moved/mnist_sample.tgz"] = ("file", data)
    path = untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert (path / "labels.csv").is_file() and server.hits["/moved/mnist_sample.tgz"] == 1


def test_concurrent_callers_download_once(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("slow", data)
    results, errors = [], []

    def call():
        try: results.append(untar_data(URLs.MNIST_SAMPLE, progress=False))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads: t.start()
    for t in threads: t.join(30)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert server.hits[MNIST_PATH] == 1
    assert (results[0] / "labels.csv").is_file()


@pytest.mark.parametrize("entries", [
    [("mnist_sample/ok.txt", "file", b"ok"), ("mnist_sample/../../evil.txt", "file", b"pwned")],
    [("../evil.txt", "file", b"pwned")],
    [("/tmp/course-test-evil.txt", "file", b"pwned")],
    [("mnist_sample/link", "sym", "../../../evil-dir"), ("mnist_sample/link/evil.txt", "file", b"pwned")],
    [("mnist_sample/abs", "sym", "/etc"), ],
    [("mnist_sample/hard", "link", "../../evil.txt")],
], ids=["dotdot-inside", "dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out"])
def test_unsafe_archives_are_refused(env, server, monkeypatch, entries):
    data = evil_tgz(entries)
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("file", data)
    before = set(env.parent.iterdir())
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert not (cache(env) / "mnist_sample").exists() and not list(cache(env).glob(".*unpacking*"))
    assert not Path("/tmp/course-test-evil.txt").exists()
    outside = [p for p in env.rglob("*evil*") if cache(env) not in p.parents]
    assert not outside and set(env.parent.iterdir()) == before


def test_zip_with_traversal_is_refused(env, server, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf: zf.writestr("../evil.txt", "pwned")
    data = buf.getvalue()
    register(monkeypatch, URLs.ML_100k, data)
    server.routes["/datasets/movielens/ml-100k.zip"] = ("file", data)
    with pytest.raises(UnsafeArchiveError):
        untar_data(URLs.ML_100k, progress=False)
    assert not list(env.rglob("evil.txt"))


def test_network_errors_are_explained(env, server, monkeypatch):
    register(monkeypatch, URLs.MNIST_SAMPLE, b"x")
    # nothing listening: connection refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    monkeypatch.setenv("COURSE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="refused") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False, retries=0)
    assert "COURSE_OFFLINE=1" in str(e.value)
    # DNS failure (simulated, so that the test never depends on a resolver)
    monkeypatch.delenv("COURSE_DATA_MIRROR")
    def no_dns(*a, **k): raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DownloadError, match="DNS") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False, retries=0)
    assert "s3.amazonaws.com" in str(e.value) and "COURSE_OFFLINE=1" in str(e.value)


def test_full_disk_is_explained(env, server, monkeypatch):
    data = mnist_tgz()
    register(monkeypatch, URLs.MNIST_SAMPLE, data)
    server.routes[MNIST_PATH] = ("file", data)
    monkeypatch.setattr(datasets.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(DownloadError, match="disk space") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert "COURSE_DATA" in str(e.value) and server.hits.get(MNIST_PATH, 0) == 0


def _bulldozers_zip(tmp: Path) -> bytes:
    from course.data.twins.tabular import make_bulldozers
    root = make_bulldozers(tmp, n=200, n_test=20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # Kaggle's zip holds the files without a top folder
        for f in sorted(root.iterdir()): zf.write(f, f.name)
    return buf.getvalue()


def test_kaggle_without_credentials_explains(env, monkeypatch):
    monkeypatch.delenv("COURSE_DATA_MIRROR")
    with pytest.raises(KaggleCredentialsError) as e:
        untar_data(URLs.BULLDOZERS, progress=False)
    msg = str(e.value)
    expected = cache(env) / "archive" / "bluebook-for-bulldozers.zip"
    assert "kaggle.json" in msg and "rules" in msg and str(expected) in msg and "COURSE_OFFLINE=1" in msg


def test_kaggle_manual_download_is_accepted(env, monkeypatch, capsys):
    monkeypatch.delenv("COURSE_DATA_MIRROR")
    data = _bulldozers_zip(env / "src")
    archive = cache(env) / "archive" / "bluebook-for-bulldozers.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(data)  # where the message says to put it
    path = untar_data(URLs.BULLDOZERS, progress=False)
    assert path == cache(env) / "bluebook" and (path / "TrainAndValid.csv").is_file()
    assert "recorded SHA-256" in capsys.readouterr().out
    assert datasets.recorded_checksum(URLs.BULLDOZERS)["sha256"] == hashlib.sha256(data).hexdigest()


def test_kaggle_through_mirror_records_then_verifies(env, server, monkeypatch):
    data = _bulldozers_zip(env / "src")
    path_on_mirror = "/api/v1/competitions/data/download-all/bluebook-for-bulldozers"
    server.routes[path_on_mirror] = ("file", data)
    path = untar_data(URLs.BULLDOZERS, progress=False)
    assert (path / "Valid.csv").is_file()
    # a later download that differs from the recorded one is refused
    shutil.rmtree(path); (cache(env) / "archive" / "bluebook-for-bulldozers.zip").unlink()
    server.routes[path_on_mirror] = ("file", data + b"tampered")
    with pytest.raises(ChecksumError, match="recorded"):
        untar_data(URLs.BULLDOZERS, progress=False)


def test_offline_returns_twin_and_says_so(env, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    path = untar_data(URLs.HUMAN_NUMBERS)
    assert path == cache(env) / "twins" / "human_numbers" and (path / "valid.txt").is_file()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "offline twin" in out[0] and "not the real dataset" in out[0]
    assert untar_data(URLs.HUMAN_NUMBERS) == path


_CHILD = """
import dataclasses, sys
from course.data import external as datasets
info = datasets.DATASETS[datasets.URLs.MNIST_SAMPLE]
datasets.DATASETS[datasets.URLs.MNIST_SAMPLE] = dataclasses.replace(info, size=int(sys.argv[1]), md5_head=sys.argv[2])
print(datasets.untar_data(datasets.URLs.MNIST_SAMPLE, progress=False))
"""


def test_two_processes_share_one_download(env, server, monkeypatch):
    import subprocess, sys
    data = mnist_tgz()
    server.routes[MNIST_PATH] = ("slow", data)
    args = [sys.executable, "-c", _CHILD, str(len(data)), hashlib.md5(data[: 2**20]).hexdigest()]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {o[0].strip() for o in outs} == {str(cache(env) / "mnist_sample")}
    assert server.hits[MNIST_PATH] == 1
