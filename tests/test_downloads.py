"""The real download code of course.data.external, run against a loopback HTTP server that serves offline-twin archives.

Every test points COURSE_DATA at a temporary folder and COURSE_DATA_MIRROR at the server, so the registry's
real URLs are rewritten to 127.0.0.1. Nothing here touches ~/.course or the internet.

The second half is a fault suite: tables of hostile or unlucky servers, names and archives (`test_fault_*`).
Every case asserts (a) a clear message in the course's own exception, with no library traceback chained under
it, (b) nothing written, changed or deleted outside the cache (a sentinel folder beside it is compared before
and after), and (c) nothing half-done left in the cache (no dataset folder, unpacking folder, archive under its
final name or recorded checksum; a `.part` only where the case is resumable, and then a prefix of the real file).
No test asserts a wall-clock time: thresholds are made small with monkeypatch, timeouts stay generous.
"""
import dataclasses
import functools
import hashlib
import io
import os
import re
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
from course.data.external import (URLs, untar_data, DownloadError, ChecksumError, UnsafeArchiveError, DamagedArchiveError,
                                   UnsafeNameError, KaggleCredentialsError)

MNIST_PATH = "/fast-ai-sample/mnist_sample.tgz"


# ---------------------------------------------------------------- the loopback server
class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address): pass  # a client that hangs up on a dripping handler is expected


class Server:
    """Routes: path -> (kind, payload). Kinds: file, truncate (always), truncate_once, stall, redirect, slow, call (payload(handler)).
    Paths without a route go to `fallback` (a call payload) or get a 404. Counts requests."""

    def __init__(self):
        self.routes, self.hits, self.ranges, self.fallback = {}, {}, [], None
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client never holds a server thread for long

            def log_message(self, *args): pass

            def do_GET(self):
                path = self.path
                server.hits[path] = server.hits.get(path, 0) + 1
                self.srv = server
                kind, payload = server.routes.get(path, ("call", server.fallback) if server.fallback else ("404", None))
                if kind == "call":
                    payload(self); return
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

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
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
    with pytest.raises(DownloadError, match="timed out") as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False, timeout=1, retries=0)
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


# ================================================================ the fault suite
THING_PATH = "/files/thing.tgz"  # an address outside the registry: no published size or checksum


def small_tgz(top="mnist_sample") -> bytes:
    "A small, valid .tgz with one top folder (deterministic, so its hash is stable)."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(5):  # about 10 kB that gzip cannot shrink, so that a cut or resumed transfer has a middle
            data = b"".join(hashlib.sha256(f"{top} {i} {j}".encode()).digest() for j in range(64))
            ti = tarfile.TarInfo(f"{top}/part{i}/data.txt"); ti.size = len(data); ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


GOOD = small_tgz()


SHIPPED_LIMITS = {name: getattr(datasets, name) for name in ("MAX_EXPANSION", "MIN_EXTRACT_BYTES", "MIN_EXTRACT_FILES", "BYTES_PER_ENTRY")}


@pytest.fixture
def guard(env, monkeypatch):
    "A sentinel folder beside the cache and a snapshot of everything outside the cache; small limits, no retry waits."
    sentinel = env / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "a.txt").write_text("keep me")
    (sentinel / "sub" / "b.txt").write_text("keep me too")
    monkeypatch.setattr(datasets, "RETRY_WAIT", 0)
    monkeypatch.setattr(datasets, "MAX_DOWNLOAD", 2_000_000)
    monkeypatch.setattr(datasets, "MIN_EXTRACT_BYTES", 1_000_000)
    monkeypatch.setattr(datasets, "MIN_EXTRACT_FILES", 500)
    return snapshot(env)


def snapshot(env) -> dict:
    "Every path under the test's folder, outside the cache: its kind and content (or link target, or link count)."
    skip, out = cache(env), {}
    for folder, dirs, files in os.walk(env):
        dirs[:] = [d for d in dirs if Path(folder) / d != skip]
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink(): out[p] = ("link", os.readlink(p))
            elif p.is_dir(): out[p] = ("dir",)
            else: out[p] = ("file", p.read_bytes(), p.stat().st_nlink)
    return out


def assert_nothing_escaped(env, before):
    "(b): nothing outside the cache was written, changed or deleted; nothing landed further up either."
    assert snapshot(env) == before
    for up in (env.parent, env.parent.parent):
        assert not [p for p in up.iterdir() if "evil" in p.name or p.name == "outside"]


def assert_clear_message(e, pattern):
    "(a): the course's own exception, a message that says what happened and what to do, and no library traceback under it."
    assert isinstance(e, DownloadError), f"{type(e).__name__}: {e}"
    assert e.__context__ is None or e.__suppress_context__, "a library traceback is chained under the message"
    msg = str(e)
    assert re.search(pattern, msg), msg
    assert re.search(r"(?i)again|COURSE_OFFLINE|COURSE_DATA|mirror|check|give the address|by hand", msg), msg


def assert_nothing_partial(env, url, good: bytes | None, part_ok: bool):
    "(c): no dataset folder, unpacking folder, archive under its final name or recorded checksum; a `.part` only if resumable."
    c = cache(env)
    assert not (c / "mnist_sample").exists() and not (c / "thing").exists()
    assert not list(c.glob(".*unpacking*"))
    assert not [p for p in (c / "archive").glob("*") if not p.name.endswith(".part")]
    assert datasets.recorded_checksum(url) is None
    for part in c.rglob("*.part"):
        assert part_ok, f"{part.name} left behind"
        assert good is not None and good.startswith(part.read_bytes()), "a .part that is not a prefix of the file"


# ---------------------------------------------------------------- how hostile servers answer
def send(h, body=b"", status=200, length="auto", **headers):
    "Answer with `body`; `length`: the Content-Length to claim ('auto': the true one, None: none, close-delimited)."
    h.send_response(status)
    if length == "auto": length = len(body)
    if length is not None: h.send_header("Content-Length", str(length))
    for k, v in headers.items(): h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    h.wfile.write(body); h.wfile.flush()


def hang_up(h):
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def range_start(h) -> int:
    rng = h.headers.get("Range")
    return int(rng.split("=")[1].split("-")[0]) if rng else 0


def serve(h, d):
    "A correct server: the whole file, or the asked-for rest (206), or 416 past the end."
    start = range_start(h)
    if start: h.srv.ranges.append(h.headers["Range"])
    if start >= len(d) and start: send(h, b"", status=416, Content_Range=f"bytes */{len(d)}"); return
    if start: send(h, d[start:], status=206, Content_Range=f"bytes {start}-{len(d) - 1}/{len(d)}")
    else: send(h, d)


def first(h) -> bool: return h.srv.hits[h.path] == 1


def drip(h, data: bytes, every=0.02):
    "Send `data` a byte at a time (then nothing) until the client hangs up or the server stops."
    for i in range(len(data)):
        if h.srv.stop.is_set(): return
        h.wfile.write(data[i:i + 1]); h.wfile.flush(); time.sleep(every)
    h.srv.stop.wait(30)


def endless(h, chunk=bytes(65536)):
    h.send_response(200); h.end_headers()
    while not h.srv.stop.is_set(): h.wfile.write(chunk)


HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>" + b"<p>Please try later.</p>" * 40 + b"</body></html>"

BEHAVIOURS = {
    "truncated": lambda h, d: (send(h, d[: len(d) // 2], length=len(d)), hang_up(h)),
    "short-no-length": lambda h, d: send(h, d[: len(d) // 2], length=None),
    "cut-gzip": lambda h, d: send(h, d[: len(d) // 2]),
    "html-200": lambda h, d: send(h, HTML, Content_Type="text/html"),
    # a resume request answered with the whole file again, but labelled 206 (Content-Length gives it away)
    "206-restarts-at-0": lambda h, d: (send(h, d, status=206, Content_Range=f"bytes {range_start(h)}-{len(d) - 1}/{len(d)}")
                                       if range_start(h) else (send(h, d[: len(d) // 2], length=len(d)), hang_up(h)) if first(h) else send(h, d)),
    "206-without-range": lambda h, d: (send(h, d, status=206) if range_start(h)
                                       else (send(h, d[: len(d) // 2], length=len(d)), hang_up(h)) if first(h) else send(h, d)),
    # the same, with headers that fit: only the archive itself can tell
    "206-restarts-at-0-lying": lambda h, d: (send(h, d[: len(d) - range_start(h)], status=206, Content_Range=f"bytes {range_start(h)}-{len(d) - 1}/{len(d)}")
                                             if range_start(h) else (send(h, d[: len(d) // 2], length=len(d)), hang_up(h))),
    "range-ignored": lambda h, d: (send(h, d[: len(d) // 2], length=len(d)), hang_up(h)) if first(h) else send(h, d),
    "404": lambda h, d: send(h, b"not here", status=404),
    "500": lambda h, d: send(h, b"oops", status=500),
    "403": lambda h, d: send(h, b"no", status=403),
    "503-then-ok": lambda h, d: send(h, b"busy", status=503) if first(h) else serve(h, d),
    "429-then-ok": lambda h, d: send(h, b"slow down", status=429, Retry_After="0") if first(h) else serve(h, d),
    "stall-headers": lambda h, d: h.srv.stop.wait(30),
    "stall-body": lambda h, d: (send(h, d[: len(d) // 2], length=len(d)), h.srv.stop.wait(30)),
    "drip-body": lambda h, d: (send(h, b"", length=len(d)), drip(h, d)),
    "drip-headers": lambda h, d: drip(h, b"HTTP/1.0 200 OK\r\nX-Padding: " + b"x" * 5000),
    "drip-no-length": lambda h, d: (send(h, b"", length=None), drip(h, d)),
    "redirect-loop": lambda h, d: send(h, status=302, Location="/loop-b" if h.path != "/loop-b" else THING_PATH),
    "redirect-self": lambda h, d: send(h, status=301, Location=h.path),
    "redirect-chain": lambda h, d: send(h, status=302, Location=f"/r{h.srv.hits[h.path] + len(h.srv.hits)}"),
    "redirect-file": lambda h, d: send(h, status=302, Location="file:///etc/passwd"),
    "redirect-ftp": lambda h, d: send(h, status=302, Location="ftp://127.0.0.1/thing.tgz"),
    "length-bigger": lambda h, d: (send(h, d, length=len(d) + 100), hang_up(h)),
    "length-smaller": lambda h, d: send(h, d, length=len(d) // 2),
    "length-garbage": lambda h, d: send(h, d, length="12abc"),
    "endless": lambda h, d: endless(h),
    "not-http": lambda h, d: (h.wfile.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n"), h.wfile.flush()),
    "hang-up": lambda h, d: hang_up(h),
    "serve": serve,
}

OK = None  # expected: success
# (id, registered?, behaviour, setup, untar_data kwargs, expected exception, message pattern, .part may remain)
DOWNLOAD_FAULTS = [
    ("truncated", True, "truncated", None, {}, DownloadError, "broke|received", True),
    ("truncated-unpublished", False, "truncated", None, {}, DownloadError, "broke|received", True),
    ("short-no-length", True, "short-no-length", None, {}, DownloadError, "broke|received", True),
    ("short-no-length-unpublished", False, "short-no-length", None, {}, DamagedArchiveError, "damaged|cut short", False),
    ("cut-gzip", True, "cut-gzip", None, {}, ChecksumError, "published size", False),
    ("cut-gzip-unpublished", False, "cut-gzip", None, {}, DamagedArchiveError, "damaged|cut short", False),
    ("html-200", True, "html-200", None, {}, ChecksumError, "published size", False),
    ("html-200-unpublished", False, "html-200", None, {}, DamagedArchiveError, "not a tar or zip", False),
    ("206-restarts-at-0", True, "206-restarts-at-0", None, {}, OK, "", False),
    ("206-restarts-at-0-unpublished", False, "206-restarts-at-0", None, {}, OK, "", False),
    ("206-without-content-range", False, "206-without-range", None, {}, OK, "", False),
    ("206-lying", True, "206-restarts-at-0-lying", None, {}, ChecksumError, "checksum", False),
    ("206-lying-unpublished", False, "206-restarts-at-0-lying", None, {}, DamagedArchiveError, "damaged|cut short", False),
    ("resume-range-ignored", True, "range-ignored", None, {}, OK, "", False),
    ("resume-part-too-long", False, "serve", "long-part", {}, OK, "", False),
    ("resume-part-too-long-published", True, "serve", "long-part", {}, ChecksumError, "size", False),
    ("resume-foreign-part", False, "serve", "junk-part", {}, DamagedArchiveError, "damaged|cut short|not a tar", False),
    ("bad-checksum", True, "serve", "bad-md5", {}, ChecksumError, "checksum", False),
    ("bad-size", True, "serve", "bad-size", {}, ChecksumError, "size", False),
    ("recorded-checksum-differs", False, "serve", "other-recorded", {}, ChecksumError, "recorded", False),
    ("404", True, "404", None, {}, DownloadError, "404", False),
    ("404-unpublished", False, "404", None, {}, DownloadError, "404", False),
    ("500", True, "500", None, {}, DownloadError, "HTTP 500", False),
    ("403", False, "403", None, {}, DownloadError, "403", False),
    ("503-then-ok", True, "503-then-ok", None, {}, OK, "", False),
    ("429-then-ok", False, "429-then-ok", None, {}, OK, "", False),
    ("stall-before-headers", True, "stall-headers", None, {"timeout": 1, "retries": 0}, DownloadError, "timed out", False),
    ("stall-mid-body", True, "stall-body", None, {"timeout": 1, "retries": 0}, DownloadError, "timed out", True),
    ("drip-body", True, "drip-body", "slow-rule", {}, DownloadError, "too slowly", True),
    ("drip-headers", True, "drip-headers", "slow-rule", {}, DownloadError, "too slowly", False),
    ("drip-no-length", False, "drip-no-length", "slow-rule", {}, DownloadError, "too slowly", True),
    ("redirect-loop", False, "redirect-loop", None, {}, DownloadError, "redirect", False),
    ("redirect-to-itself", False, "redirect-self", None, {}, DownloadError, "redirect", False),
    ("redirect-chain", False, "redirect-chain", None, {}, DownloadError, "redirect", False),
    ("redirect-to-file", False, "redirect-file", None, {}, DownloadError, "redirect", False),
    ("redirect-to-ftp", False, "redirect-ftp", None, {}, DownloadError, "redirect", False),
    ("length-bigger", True, "length-bigger", None, {}, ChecksumError, "published size", False),
    ("length-bigger-unpublished", False, "length-bigger", None, {}, DownloadError, "broke|received", True),
    ("length-smaller", True, "length-smaller", None, {}, ChecksumError, "published size", False),
    ("length-smaller-unpublished", False, "length-smaller", None, {}, DamagedArchiveError, "damaged|cut short", False),
    ("length-garbage", False, "length-garbage", None, {}, OK, "", False),
    ("endless", True, "endless", None, {}, ChecksumError, "more than the published", False),
    ("endless-unpublished", False, "endless", None, {}, DownloadError, "more than", False),
    ("not-http", True, "not-http", None, {}, DownloadError, "did not answer in HTTP", False),
    ("hang-up", True, "hang-up", None, {}, DownloadError, "broke", False),
    ("connection-refused", True, None, "refused", {}, DownloadError, "refused", False),
    ("mirror-not-a-port", True, None, "bad-port", {}, DownloadError, "not a valid address", False),
]


@pytest.mark.parametrize("reg,behaviour,setup,kwargs,expected,pattern,part_ok",
                         [pytest.param(*row[1:], id=row[0]) for row in DOWNLOAD_FAULTS])
def test_fault_download(env, server, monkeypatch, guard, reg, behaviour, setup, kwargs, expected, pattern, part_ok):
    url = URLs.MNIST_SAMPLE if reg else server.url + THING_PATH
    path, folder = (MNIST_PATH, "mnist_sample") if reg else (THING_PATH, "thing")
    archive = cache(env) / "archive" / Path(path).name
    if reg: register(monkeypatch, url, GOOD)
    if behaviour: server.fallback = functools.partial(BEHAVIOURS[behaviour], d=GOOD)
    if setup == "long-part": archive.parent.mkdir(parents=True); archive.with_name(archive.name + ".part").write_bytes(GOOD + b"x" * 100)
    if setup == "junk-part": archive.parent.mkdir(parents=True); archive.with_name(archive.name + ".part").write_bytes(b"junk" * 10)
    if setup == "bad-md5": register(monkeypatch, url, GOOD, md5_head="0" * 32)
    if setup == "bad-size": register(monkeypatch, url, GOOD, size=len(GOOD) + 1)
    if setup == "other-recorded": datasets.record_checksum(url, Path(shutil.copy(datasets.__file__, env / "other")))
    if setup == "slow-rule":
        monkeypatch.setattr(datasets, "MIN_SPEED", 1000)
        monkeypatch.setattr(datasets, "SPEED_WINDOW", 1.0)
    if setup == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
        monkeypatch.setenv("COURSE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    if setup == "bad-port": monkeypatch.setenv("COURSE_DATA_MIRROR", "http://127.0.0.1:80x")
    if setup == "other-recorded": before = snapshot(env)  # the copy made above is part of the setup
    else: before = guard
    call = dict(progress=False, timeout=10, retries=2) | kwargs
    if expected is OK:
        got = untar_data(url, **call)
        assert got == cache(env) / folder and (got / "part0" / "data.txt").is_file()
        assert archive.read_bytes() == GOOD and not list(cache(env).rglob("*.part"))
        if not reg: assert datasets.recorded_checksum(url)["sha256"] == hashlib.sha256(GOOD).hexdigest()
    else:
        with pytest.raises(DownloadError) as e:
            untar_data(url, **call)
        assert isinstance(e.value, expected), f"{type(e.value).__name__}: {e.value}"
        assert_clear_message(e.value, pattern)
        if setup == "other-recorded":
            assert datasets.recorded_checksum(url)["sha256"] != hashlib.sha256(GOOD).hexdigest()  # the old reference stays
            assert not (cache(env) / folder).exists() and not archive.exists()
        else:
            assert_nothing_partial(env, url, GOOD, part_ok)
    assert_nothing_escaped(env, before)


@pytest.mark.parametrize("behaviour", ["short-no-length", "cut-gzip", "html-200", "206-restarts-at-0-lying", "length-smaller"])
def test_fault_damaged_first_download_is_not_the_reference(env, server, guard, behaviour):
    "Without a published checksum, a damaged first download is deleted and recorded nowhere; the good file later is accepted."
    url = server.url + THING_PATH
    server.fallback = functools.partial(BEHAVIOURS[behaviour], d=GOOD)
    with pytest.raises(DownloadError) as e:
        untar_data(url, progress=False, retries=1)
    assert_clear_message(e.value, "damaged|cut short|not a tar")
    assert_nothing_partial(env, url, GOOD, part_ok=False)
    server.fallback = functools.partial(serve, d=GOOD)
    path = untar_data(url, progress=False)
    assert (path / "part4" / "data.txt").is_file()
    assert datasets.recorded_checksum(url)["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert_nothing_escaped(env, guard)


def test_fault_drip_is_stopped_and_resumed(env, server, monkeypatch, guard):
    "A dripping server is cut off with a clear message; what arrived is kept and the next call finishes it."
    register(monkeypatch, URLs.MNIST_SAMPLE, GOOD)
    monkeypatch.setattr(datasets, "MIN_SPEED", 1000)
    monkeypatch.setattr(datasets, "SPEED_WINDOW", 1.0)
    server.fallback = lambda h: (send(h, GOOD[:100], length=len(GOOD)), drip(h, GOOD[100:]))
    with pytest.raises(DownloadError, match="too slowly"):
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    part = cache(env) / "archive" / "mnist_sample.tgz.part"
    have = part.stat().st_size
    assert 100 <= have < len(GOOD) and GOOD.startswith(part.read_bytes())
    monkeypatch.setattr(datasets, "SPEED_WINDOW", 60)
    server.fallback = functools.partial(serve, d=GOOD)
    assert (untar_data(URLs.MNIST_SAMPLE, progress=False) / "part0" / "data.txt").is_file()
    assert server.ranges == [f"bytes={have}-"]  # it asked for the rest only
    assert_nothing_escaped(env, guard)


def test_one_retry_policy():
    "retry_wait and with_retries (the policy of downloads and of chapter 2's image search): 408, 429, 5xx and broken connections are retried with a doubling wait or the server's Retry-After (at most a minute); other answers are final."
    import urllib.error
    def answer(code, **headers): return urllib.error.HTTPError("http://x.test/a", code, "", headers, None)
    assert [datasets.retry_wait(answer(503), n, backoff=0.5) for n in range(4)] == [0.5, 1, 2, 4]
    assert datasets.retry_wait(answer(429, **{"Retry-After": "7"}), 2) == 7
    assert datasets.retry_wait(answer(503, **{"Retry-After": "3600"}), 0) == 60
    assert datasets.retry_wait(answer(500, **{"Retry-After": "soon"}), 1, backoff=1) == 2  # unreadable: the back-off
    assert all(datasets.retry_wait(answer(c), 0) is None for c in (400, 401, 403, 404, 416))
    assert datasets.retry_wait(ConnectionResetError(), 0, backoff=1) == 1 and datasets.retry_wait(ValueError(), 0) is None
    assert datasets.retry_wait(urllib.error.URLError(ConnectionRefusedError()), 0, backoff=1) == 1
    assert datasets.retry_wait(urllib.error.URLError(FileNotFoundError()), 0) is None

    waits, calls = [], []
    def failing(errors):
        def attempt():
            calls.append(1)
            if errors: raise errors.pop(0)
            return "done"
        return attempt
    assert datasets.with_retries(failing([answer(503), answer(502)]), retries=3, backoff=1, sleep=waits.append) == "done"
    assert waits == [1, 2] and len(calls) == 3
    waits.clear(); calls.clear()
    with pytest.raises(urllib.error.HTTPError) as e:
        datasets.with_retries(failing([answer(404), answer(503)]), retries=3, sleep=waits.append)
    assert e.value.code == 404 and waits == [] and len(calls) == 1                         # final at once
    waits.clear(); calls.clear()
    with pytest.raises(urllib.error.HTTPError) as e:
        datasets.with_retries(failing([answer(500)] * 5), retries=2, backoff=1, sleep=waits.append)
    assert waits == [1, 2] and len(calls) == 3                                              # the last failure is raised


# ---------------------------------------------------------------- names that must not become paths
NAME_FAULTS = [
    ("dotdot", "/files/.."), ("dotdot-slash", "/files/../"), ("dot", "/files/."), ("empty", "/files/"), ("root", ""),
    ("backslashes", "/files/..\\..\\thing.tgz"), ("nul", "/files/thing\x00.tgz"), ("hidden", "/files/.thing.tgz"),
    ("only-extension", "/files/.tgz"), ("cache-archive-folder", "/files/archive.tgz"), ("cache-twins", "/files/twins.zip"),
    ("cache-checksums", "/files/checksums.json"), ("cache-locks", "/files/.locks"), ("part-name", "/files/thing.tgz.part"),
    ("dash", "/files/-rf.tgz"), ("too-long", "/files/" + "a" * 300 + ".tgz"),
]


@pytest.mark.parametrize("tail", [pytest.param(t, id=i) for i, t in NAME_FAULTS])
def test_fault_unsafe_name(env, server, guard, tail):
    "A URL whose last part cannot name a file in the cache is refused before anything is deleted or requested."
    server.fallback = functools.partial(serve, d=GOOD)
    c = cache(env)
    (c / "archive").mkdir(parents=True)
    (c / "archive" / "keep.tgz").write_bytes(GOOD)
    (c / "mnist_sample" / "x").mkdir(parents=True)
    (c / "checksums.json").write_text("{}")
    (c / "twins").mkdir()
    inside = {p: p.stat().st_size for p in c.rglob("*")}
    for force in (True, False):
        with pytest.raises(UnsafeNameError) as e:
            untar_data(server.url + tail, force_download=force, progress=False)
        assert_clear_message(e.value, "cannot safely name")
    assert {p: p.stat().st_size for p in c.rglob("*") if ".locks" not in p.parts} == {p: s for p, s in inside.items()}
    assert not server.hits
    assert_nothing_escaped(env, guard)


def test_fault_force_download_of_dotdot_deletes_nothing(env, server, guard):
    "The reported case: `..` with force_download=True once deleted the whole course folder."
    (cache(env) / "mnist_sample").mkdir(parents=True)
    with pytest.raises(UnsafeNameError):
        untar_data(server.url + "/..", force_download=True, progress=False)
    with pytest.raises(UnsafeNameError):
        untar_data(server.url + "/fast-ai-sample/..", force_download=True, progress=False)
    assert (cache(env) / "mnist_sample").is_dir() and env.is_dir()
    assert_nothing_escaped(env, guard)


def test_fault_removal_outside_cache_is_refused(env, tmp_path):
    "The one deleting helper checks resolved paths: it refuses anything outside the cache, and removes links, not their targets."
    c = cache(env); c.mkdir()
    outside = tmp_path / "precious"; outside.mkdir(); (outside / "f").write_text("x")
    for victim in (outside, c / ".." / "precious", c, c / "."):
        with pytest.raises(DownloadError, match="Refusing to delete"):
            datasets._remove(victim, c)
    (c / "link").symlink_to(outside)
    datasets._remove(c / "link", c)
    assert not (c / "link").exists() and (outside / "f").is_file()
    (c / "sub").symlink_to(tmp_path)  # a path inside the cache by name, outside once resolved
    with pytest.raises(DownloadError, match="Refusing to delete"):
        datasets._remove(c / "sub" / "precious", c)
    assert (outside / "f").is_file()


# ---------------------------------------------------------------- hostile archives
def build_archive(fmt: str, entries, sentinel: Path) -> bytes:
    """An archive from (name, kind, data) entries; "{S}" in a name or target stands for the sentinel folder.
    Kinds: file, dir, sym (data: target), link (hard link, data: target), chr, blk, fifo; zip: file, sym, encrypted."""
    fill = lambda x: x.replace("{S}", str(sentinel)) if isinstance(x, str) else x
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, kind, data in entries:
                info = zipfile.ZipInfo(fill(name))
                info.compress_type = zipfile.ZIP_DEFLATED
                if kind == "sym": info.external_attr = (0o120777 << 16); data = fill(data).encode()
                zf.writestr(info, data)
        data = buf.getvalue()
        if any(kind == "encrypted" for _, kind, _ in entries):  # zipfile writes no encrypted entries: set the flag by hand
            data = bytearray(data)
            for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
                i = data.index(sig); data[i + at] |= 0x1
        return bytes(data)
    mode = {"tgz": "w:gz", "tar": "w", "tbz": "w:bz2", "txz": "w:xz"}[fmt]
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(fill(name))
            if kind == "file":
                ti.size = len(data); tf.addfile(ti, io.BytesIO(data)); continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                       "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "link"): ti.linkname = fill(data)
            tf.addfile(ti)
    return buf.getvalue()


F = b"pwned"
CHAIN = [("mnist_sample/models", "sym", "l/outside"), ("mnist_sample/l", "sym", "p/.."),
         ("mnist_sample/p", "sym", "q/.."), ("mnist_sample/q", "sym", ".")]
OKFILE = [("mnist_sample/ok.txt", "file", b"ok")]
# (id, format, entries, expected exception, message pattern)
ARCHIVE_FAULTS = [
    ("dotdot", "tgz", [("../evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("dotdot-inside", "tgz", OKFILE + [("mnist_sample/../../evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("dotdot-deep", "tgz", [("mnist_sample/" + "../" * 12 + "evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("dotdot-backslash", "tgz", [("mnist_sample\\..\\..\\evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("absolute", "tgz", [("{S}/evil.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("absolute-overwrite", "tgz", [("{S}/a.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("absolute-drive", "tgz", [("C:/evil.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("symlink-out", "tgz", [("mnist_sample/link", "sym", "../../.."), ("mnist_sample/link/evil.txt", "file", F)], UnsafeArchiveError, "outside"),
    ("symlink-absolute", "tgz", OKFILE + [("mnist_sample/abs", "sym", "{S}")], UnsafeArchiveError, "absolute"),
    ("symlink-absolute-write", "tgz", [("mnist_sample/abs", "sym", "{S}"), ("mnist_sample/abs/evil.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("symlink-top-out", "tgz", [("mnist_sample", "sym", "..")], UnsafeArchiveError, "outside"),
    ("symlink-sibling", "tgz", OKFILE + [("mnist_sample/up", "sym", "..")], UnsafeArchiveError, "outside"),
    ("symlink-replaces-file", "tgz", OKFILE + [("mnist_sample/ok.txt", "sym", "{S}/a.txt")], UnsafeArchiveError, "absolute"),
    ("symlink-chain", "tgz", OKFILE + CHAIN, UnsafeArchiveError, "outside"),
    ("symlink-chain-reversed", "tgz", OKFILE + CHAIN[::-1], UnsafeArchiveError, "outside"),
    ("symlink-chain-then-write", "tgz", CHAIN + [("mnist_sample/models/evil.txt", "file", F)], UnsafeArchiveError, "outside"),
    ("symlink-chain-deeper", "tgz", [("mnist_sample/a", "sym", "b/.."), ("mnist_sample/b", "sym", "c/.."), ("mnist_sample/c", "sym", "d/.."),
                                     ("mnist_sample/d", "sym", "."), ("mnist_sample/x", "sym", "a/a/a/evil")], UnsafeArchiveError, "outside"),
    ("symlink-loop-write", "tgz", [("mnist_sample/a", "sym", "b"), ("mnist_sample/b", "sym", "a"), ("mnist_sample/a/x", "file", F)],
     UnsafeArchiveError, "loop"),
    ("symlink-replaces-dir", "tgz", [("mnist_sample/m", "dir", None), ("mnist_sample/m", "sym", "../..")], UnsafeArchiveError, "outside"),
    ("absolute-dir", "tgz", [("{S}/newdir", "dir", None)], UnsafeArchiveError, "absolute"),
    ("hardlink-out", "tgz", [("mnist_sample/hard", "link", "../../evil.txt")], UnsafeArchiveError, "outside|climbs"),
    ("hardlink-absolute", "tgz", OKFILE + [("mnist_sample/hard", "link", "{S}/a.txt")], UnsafeArchiveError, "absolute"),
    ("hardlink-through-symlink", "tgz", [("mnist_sample/s", "sym", "."), ("mnist_sample/hard", "link", "mnist_sample/s/../../x")],
     UnsafeArchiveError, "outside|climbs"),
    ("char-device", "tgz", OKFILE + [("mnist_sample/null", "chr", None)], UnsafeArchiveError, "device"),
    ("block-device", "tgz", OKFILE + [("mnist_sample/sda", "blk", None)], UnsafeArchiveError, "device"),
    ("fifo", "tgz", OKFILE + [("mnist_sample/pipe", "fifo", None)], UnsafeArchiveError, "device|pipe"),
    ("zip-slip", "zip", [("mnist_sample/ok.txt", "file", b"ok"), ("../evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("zip-slip-deep", "zip", [("mnist_sample/../../../evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("zip-absolute", "zip", [("{S}/evil.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("zip-backslash", "zip", [("..\\..\\evil.txt", "file", F)], UnsafeArchiveError, "climbs out"),
    ("zip-drive", "zip", [("C:\\evil.txt", "file", F)], UnsafeArchiveError, "absolute"),
    ("zip-slip-dir", "zip", [("mnist_sample/../../evildir/", "file", b"")], UnsafeArchiveError, "climbs out"),
    ("zip-symlink", "zip", [("mnist_sample/link", "sym", "{S}")], UnsafeArchiveError, "symbolic link"),
    ("gzip-bomb", "tgz", [("mnist_sample/zeros", "file", bytes(5_000_000))], UnsafeArchiveError, "zip bomb"),
    ("bz2-bomb", "tbz", [("mnist_sample/zeros", "file", bytes(5_000_000))], UnsafeArchiveError, "zip bomb"),
    ("xz-bomb", "txz", [("mnist_sample/zeros", "file", bytes(5_000_000))], UnsafeArchiveError, "zip bomb"),
    ("zip-bomb", "zip", [("mnist_sample/zeros", "file", bytes(5_000_000))], UnsafeArchiveError, "zip bomb"),
    ("many-files", "tgz", [(f"mnist_sample/{i}", "file", b"") for i in range(3000)], UnsafeArchiveError, "zip bomb"),
    ("zip-many-files", "zip", [(f"mnist_sample/{i}", "file", b"") for i in range(3000)], UnsafeArchiveError, "zip bomb"),
    ("zip-encrypted", "zip", [("mnist_sample/x", "encrypted", b"data")], DamagedArchiveError, "encrypted"),
]


def damaged(kind: str) -> bytes:
    "Archives damaged in ways only opening them can tell."
    plain = build_archive("tar", [("mnist_sample/a", "file", b"a" * 600), ("mnist_sample/b", "file", b"b" * 600)], Path("/"))
    if kind == "tar-cut-between-entries": return plain[:1536]
    if kind == "tar-cut-mid-entry": return plain[:1000]
    if kind == "tar-bad-header": return plain[:1536] + b"\x01" * 512 + plain[2048:]
    if kind == "tgz-cut": return GOOD[:-9]
    if kind == "tgz-corrupt": return GOOD[:40] + bytes(b ^ 0x55 for b in GOOD[40:80]) + GOOD[80:]
    if kind == "tbz-cut": return build_archive("tbz", OKFILE * 3, Path("/"))[:-20]
    if kind == "txz-cut": return build_archive("txz", OKFILE * 3, Path("/"))[:-20]
    zipped = build_archive("zip", [("mnist_sample/a", "file", b"a" * 5000)], Path("/"))
    if kind == "zip-cut": return zipped[: len(zipped) // 2]
    if kind == "zip-bad-crc": i = zipped.index(b"mnist_sample/a") + 20; return zipped[:i] + bytes(b ^ 0xFF for b in zipped[i:i + 8]) + zipped[i + 8:]
    if kind == "empty": return b""
    if kind == "zeros": return bytes(10240)
    if kind == "random": return bytes(range(256)) * 40
    raise KeyError(kind)


DAMAGED = ["tar-cut-between-entries", "tar-cut-mid-entry", "tar-bad-header", "tgz-cut", "tgz-corrupt", "tbz-cut", "txz-cut",
           "zip-cut", "zip-bad-crc", "empty", "zeros", "random"]


def _serve_archive(env, server, monkeypatch, data: bytes, registered: bool):
    url = URLs.MNIST_SAMPLE if registered else server.url + THING_PATH
    if registered: register(monkeypatch, url, data)
    server.fallback = functools.partial(serve, d=data)
    return url


@pytest.mark.parametrize("fmt,entries,expected,pattern", [pytest.param(*row[1:], id=row[0]) for row in ARCHIVE_FAULTS])
@pytest.mark.parametrize("registered", [True, False], ids=["published", "unpublished"])
def test_fault_archive(env, server, monkeypatch, guard, fmt, entries, expected, pattern, registered):
    data = build_archive(fmt, entries, env / "sentinel")
    url = _serve_archive(env, server, monkeypatch, data, registered)
    with pytest.raises(DownloadError) as e:
        untar_data(url, progress=False)
    assert isinstance(e.value, expected), f"{type(e.value).__name__}: {e.value}"
    assert_clear_message(e.value, pattern)
    assert "has been deleted" in str(e.value)
    assert_nothing_partial(env, url, None, part_ok=False)
    assert_nothing_escaped(env, guard)


@pytest.mark.parametrize("kind", DAMAGED)
def test_fault_damaged_archive(env, server, monkeypatch, guard, kind):
    url = _serve_archive(env, server, monkeypatch, damaged(kind), registered=False)
    with pytest.raises(DownloadError) as e:
        untar_data(url, progress=False)
    assert isinstance(e.value, DamagedArchiveError), f"{type(e.value).__name__}: {e.value}"
    assert_clear_message(e.value, "damaged|cut short|not a tar or zip")
    assert_nothing_partial(env, url, None, part_ok=False)
    assert_nothing_escaped(env, guard)


def test_fault_archive_placed_by_hand_is_checked_too(env, guard):
    "An archive already in archive/ (e.g. saved by hand) goes through the same checks; a hostile one is deleted."
    archive = cache(env) / "archive" / "bluebook-for-bulldozers.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(build_archive("zip", [("../evil.txt", "file", F)], env / "sentinel"))
    with pytest.raises(UnsafeArchiveError) as e:
        untar_data(URLs.BULLDOZERS, progress=False)
    assert_clear_message(e.value, "climbs out")
    assert not archive.exists() and datasets.recorded_checksum(URLs.BULLDOZERS) is None
    assert_nothing_escaped(env, guard)


def test_links_inside_are_kept_and_writes_through_them_stay_inside(env, server, monkeypatch, guard):
    "A link that stays in the dataset is fine; saving a model through it (as Learner.save does into path/models) stays inside."
    data = build_archive("tgz", [("mnist_sample/weights/.keep", "file", b""), ("mnist_sample/models", "sym", "weights"),
                                 ("mnist_sample/here", "sym", "."), ("mnist_sample/models2", "sym", "here/weights")], env / "sentinel")
    url = _serve_archive(env, server, monkeypatch, data, registered=True)
    path = untar_data(url, progress=False)
    (path / "models" / "model.pth").write_bytes(b"weights")
    (path / "models2" / "other.pth").write_bytes(b"weights")
    assert (path / "weights" / "model.pth").is_file() and (path / "weights" / "other.pth").is_file()
    for link in ("models", "here", "models2"):
        assert path.resolve() in ((path / link).resolve().parents) or (path / link).resolve() == path.resolve()
    assert_nothing_escaped(env, guard)


# ---------------------------------------------------------------- killed extractions
def _dead_pid() -> int:
    import subprocess, sys
    p = subprocess.Popen([sys.executable, "-c", "pass"]); p.wait()
    return p.pid


@pytest.mark.parametrize("owner,age,kept", [("dead", 0, False), ("self", 0, False), ("alive", 0, True), ("alive", 3 * 86400, False),
                                            ("link-to-sentinel", 0, False), ("not-a-pid", 0, True)])
def test_fault_stale_unpacking_folder(env, server, monkeypatch, guard, owner, age, kept):
    "A `.<name>.unpacking-<pid>` folder left by a killed extraction is removed, only if its process is gone or it is old."
    url = _serve_archive(env, server, monkeypatch, GOOD, registered=True)
    c = cache(env); c.mkdir()
    pid = {"dead": _dead_pid(), "self": os.getpid(), "alive": os.getppid(), "link-to-sentinel": _dead_pid()}.get(owner, "x1")
    stale = c / f".mnist_sample.unpacking-{pid}"
    if owner == "link-to-sentinel": stale.symlink_to(env / "sentinel", target_is_directory=True)
    else: (stale / "mnist_sample").mkdir(parents=True); (stale / "mnist_sample" / "half.txt").write_text("half")
    if age: os.utime(stale, (time.time() - age, time.time() - age))
    path = untar_data(url, progress=False)
    assert (path / "part0" / "data.txt").is_file()
    assert os.path.lexists(stale) == kept
    assert_nothing_escaped(env, guard)


def test_fault_stale_unpacking_folder_beside_a_ready_dataset(env, server, monkeypatch, guard):
    "The stale folder of a killed re-extraction goes too when the dataset is already there (no download needed)."
    url = _serve_archive(env, server, monkeypatch, GOOD, registered=True)
    path = untar_data(url, progress=False)
    stale = cache(env) / f".mnist_sample.unpacking-{_dead_pid()}"
    (stale / "mnist_sample").mkdir(parents=True)
    assert untar_data(url, progress=False) == path and not stale.exists() and server.hits[MNIST_PATH] == 1
    assert_nothing_escaped(env, guard)


def test_fault_bomb_with_default_limits(env, server, monkeypatch, guard):
    "With the shipped limits (not the small ones of the other cases), a 40 MB bomb of zeros in a 40 kB archive is refused."
    for name, value in SHIPPED_LIMITS.items(): monkeypatch.setattr(datasets, name, value)
    for fmt in ("tgz", "zip"):
        url = _serve_archive(env, server, monkeypatch, build_archive(fmt, [("mnist_sample/zeros", "file", bytes(40_000_000))], env), True)
        with pytest.raises(UnsafeArchiveError) as e:
            untar_data(url, progress=False)
        assert_clear_message(e.value, "zip bomb")
        assert_nothing_partial(env, url, None, part_ok=False)
    assert_nothing_escaped(env, guard)


# ---------------------------------------------------------------- concurrent callers
def test_fault_concurrent_threads_on_a_failing_server(env, server, monkeypatch, guard):
    "Three threads, a server that always cuts the file: each gets the clear message; nothing half-done remains."
    register(monkeypatch, URLs.MNIST_SAMPLE, GOOD)
    server.fallback = functools.partial(BEHAVIOURS["truncated"], d=GOOD)
    errors = []

    def call():
        try: untar_data(URLs.MNIST_SAMPLE, progress=False, retries=1)
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert len(errors) == 3
    for e in errors: assert_clear_message(e, "broke|received")
    assert_nothing_partial(env, URLs.MNIST_SAMPLE, GOOD, part_ok=True)
    assert_nothing_escaped(env, guard)


def test_fault_concurrent_threads_unpublished(env, server, guard):
    "Three threads on a dataset without a checksum: one download, one extraction, one recorded checksum, the same folder."
    url = server.url + THING_PATH
    server.fallback = lambda h: (time.sleep(0.2), serve(h, GOOD))
    results, errors = [], []

    def call():
        try: results.append(untar_data(url, progress=False))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert not errors and len(set(results)) == 1 and server.hits[THING_PATH] == 1
    assert datasets.recorded_checksum(url)["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert not list(cache(env).glob(".*unpacking*"))
    assert_nothing_escaped(env, guard)


_CHILD_FAIL = """
import sys
from course.data import external as datasets
try: datasets.untar_data(sys.argv[1], progress=False, retries=0)
except datasets.DownloadError as e: print("CLEAR", type(e).__name__); sys.exit(3)
"""


def test_fault_two_processes_on_a_hostile_archive(env, server, guard):
    "Two processes, one zip-slip archive: both end with the course's message, nothing escapes, nothing is left."
    import subprocess, sys
    url = server.url + THING_PATH
    server.fallback = functools.partial(serve, d=build_archive("tgz", OKFILE + CHAIN, env / "sentinel"))
    args = [sys.executable, "-c", _CHILD_FAIL, url]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 3 for p in procs), outs
    assert all(o[0].split() == ["CLEAR", "UnsafeArchiveError"] and "Traceback" not in o[1] for o in outs), outs
    assert_nothing_partial(env, url, None, part_ok=False)
    assert_nothing_escaped(env, guard)


def test_fault_unsupported_scheme(env, monkeypatch, guard):
    monkeypatch.setenv("COURSE_DATA_MIRROR", "ftp://127.0.0.1:9")
    register(monkeypatch, URLs.MNIST_SAMPLE, GOOD)
    with pytest.raises(DownloadError) as e:
        untar_data(URLs.MNIST_SAMPLE, progress=False)
    assert_clear_message(e.value, "only http")
    assert_nothing_escaped(env, guard)
