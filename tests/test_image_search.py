"""The image-search client of course.vision.search (chapter 2), run against a loopback server that speaks Openverse's API.

The server is the package's own `LoopbackImageSearch` (the one the offline chapter uses), with a `hook` that plays
an unlucky or hostile API: rate limits, server errors, duplicates, broken and slow images. Pacing and back-off
are checked on a fake clock (the provider's `clock` and `sleep`), so no test waits a real second or asserts a time.
"""
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from course.vision import search
from course.vision.search import (ImageResult, LoopbackImageSearch, Openverse, SearchError, download_images,
                                  search_images)


class FakeClock:
    "A clock that only moves when the client sleeps: records every wait."
    def __init__(self): self.now, self.waits = 100.0, []
    def clock(self): return self.now
    def sleep(self, s): self.waits.append(s); self.now += s


def make_images(root: Path, counts: dict) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (24 + i % 5, 20), (i * 5 % 255, 80, 160)).save(root / cls / f"{i:04d}.jpg")
    return root


@pytest.fixture
def api(tmp_path):
    with LoopbackImageSearch(make_images(tmp_path / "images", {"fox": 45, "owl": 7})) as server: yield server


def provider_for(server, clock=None):
    p = Openverse(api=server.api)
    clock = clock or FakeClock()
    p.clock, p.sleep = clock.clock, clock.sleep
    return p


def searches(server): return [(int(q["page"]), int(q["page_size"])) for path, q in server.requests if path == "/v1/images/"]


def test_pages_until_enough_then_stops(api):
    found = search_images("red fox", 45, provider_for(api))
    assert len(found) == 45 and len({r.url for r in found}) == 45
    assert searches(api) == [(1, 20), (2, 20), (3, 20)]
    assert all(r.url.startswith(api.url + "/files/fox/") and r.license == "cc0 1.0" and r.page and r.creator for r in found)
    api.requests.clear()
    assert len(search_images("red fox", 25, provider_for(api))) == 25
    assert searches(api) == [(1, 20), (2, 20)]   # the second page is enough: no third request


def test_stops_at_the_last_page_and_on_no_results(api):
    assert len(search_images("snowy owl", 100, provider_for(api))) == 7
    assert searches(api) == [(1, 20)]            # page_count is 1: never asks for page 2
    api.requests.clear()
    assert search_images("unicorn", 10, provider_for(api)) == []
    assert searches(api) == [(1, 20)]


def test_paces_requests_to_the_rate_limit(api):
    clock = FakeClock()
    p = provider_for(api, clock)
    times = []
    api.hook = lambda h, path, q: times.append(clock.now) and False
    search_images("fox", 45, p)
    assert len(times) == 3 and all(b - a >= p.min_interval for a, b in zip(times, times[1:]))
    assert clock.waits == [pytest.approx(p.min_interval)] * 2


def test_rate_limited_then_succeeds_waiting_as_asked(api):
    clock, seen = FakeClock(), []
    def hook(h, path, q):
        seen.append(path)
        if len(seen) == 1:
            h.send(429, b'{"detail": "Request was throttled."}', headers=[("Retry-After", "7")]); return True
    api.hook = hook
    found = search_images("fox", 10, provider_for(api, clock))
    assert len(found) == 10 and seen == ["/v1/images/", "/v1/images/"]
    assert 7 in clock.waits                      # the server's Retry-After, not the default back-off


def test_server_errors_are_retried_with_growing_waits(api):
    clock, errors = FakeClock(), [503, 502]
    def hook(h, path, q):
        if errors: h.send(errors.pop(0), b"{}"); return True
    api.hook = hook
    p = provider_for(api, clock)
    p.min_interval = 0
    assert len(search_images("owl", 5, p)) == 5
    assert clock.waits[:2] == [p.backoff, 2 * p.backoff]   # 503 without Retry-After: the back-off; then doubled


def test_a_server_that_keeps_failing_gives_a_clear_error(api):
    api.hook = lambda h, path, q: h.send(500, b"oops") or True
    p = provider_for(api)
    with pytest.raises(SearchError) as e: search_images("fox", 5, p)
    assert "HTTP 500" in str(e.value) and "Try again later" in str(e.value) and e.value.__cause__ is None
    assert len(searches(api)) == p.retries + 1


def test_client_errors_are_not_retried(api):
    p = provider_for(api)
    p.page_size = 50                             # above the anonymous limit: Openverse answers 401
    with pytest.raises(SearchError, match="401"): search_images("fox", 60, p)
    assert len(searches(api)) == 1


def test_an_answer_that_is_not_json_is_explained(api):
    api.hook = lambda h, path, q: h.send(200, b"<html>maintenance</html>", "text/html") or True
    with pytest.raises(SearchError, match="JSON"): search_images("fox", 5, provider_for(api))


def test_duplicates_are_removed(api):
    def rec(i, url=None): return {"id": f"id{i}", "url": url or f"{api.url}/files/fox/{i:04d}.jpg", "license": "by"}
    pages = {1: [rec(0), rec(1), rec(2)],
             2: [rec(1), rec(2, api.url + "/files/fox/0002.jpg?size=large"), rec(3), {"id": "", "url": rec(0)["url"]}, rec(4)]}
    def hook(h, path, q):
        page = int(q["page"])
        h.send(200, json.dumps({"page_count": 2, "results": pages[page]}).encode()); return True
    api.hook = hook
    found = search_images("fox", 100, provider_for(api))
    assert [r.id for r in found] == ["id0", "id1", "id2", "id3", "id4"]   # same id or same address: kept once


def test_download_saves_images_and_credits_them(api, tmp_path):
    found = search_images("owl", 7, provider_for(api))
    files, failed = download_images(tmp_path / "owls", found, progress=False)
    assert len(files) == 7 and failed == [] and all(f.parent == tmp_path / "owls" for f in files)
    rows = (tmp_path / "owls" / "attribution.csv").read_text().splitlines()
    assert rows[0] == "file,title,creator,license,source page,image url" and len(rows) == 8
    assert rows[1].startswith("00000.jpg,owl 0000,") and found[0].page in rows[1]
    more, _ = download_images(tmp_path / "owls", found[:2], progress=False)   # a second batch adds, never overwrites
    assert [f.name for f in more] == ["00007.jpg", "00008.jpg"]
    assert len((tmp_path / "owls" / "attribution.csv").read_text().splitlines()) == 10


def test_broken_missing_and_slow_images_are_dropped_and_reported(api, tmp_path):
    stop = threading.Event()
    def hook(h, path, q):
        if path == "/files/fox/0001.jpg": h.send(200, b"<html>not an image</html>", "image/jpeg"); return True
        if path == "/files/fox/0002.jpg": h.send(200, b"\xff\xd8\xff\xe0 cut short", "image/jpeg"); return True
        if path == "/files/fox/0003.jpg": stop.wait(5); return True   # answers nothing until the client gives up
    api.hook = hook
    urls = [f"{api.url}/files/fox/{i:04d}.jpg" for i in range(6)] + [f"{api.url}/files/fox/missing.jpg"]
    try: files, failed = download_images(tmp_path / "foxes", urls, timeout=0.5, progress=False)
    finally: stop.set()
    assert [f.name for f in files] == ["00000.jpg", "00004.jpg", "00005.jpg"]
    reasons = dict(failed)
    assert set(reasons) == {urls[1], urls[2], urls[3], urls[6]}
    assert "not an image" in reasons[urls[1]] and "not an image" in reasons[urls[2]]
    assert "timed out" in reasons[urls[3]] and "404" in reasons[urls[6]]
    assert sorted(p.name for p in (tmp_path / "foxes").iterdir()) == ["00000.jpg", "00004.jpg", "00005.jpg", "attribution.csv"]
    assert len((tmp_path / "foxes" / "attribution.csv").read_text().splitlines()) == 4


def test_offline_default_searches_the_bears_twin(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(search, "_twin_search", None)
    p = search.default_provider()
    try:
        assert isinstance(p, Openverse) and p.api.startswith("http://127.0.0.1:")
        p.clock, p.sleep = FakeClock().clock, FakeClock().sleep
        found = search_images("teddy bear", 25, p)
        assert len(found) == 25 and all("/files/teddy/" in r.url for r in found)
        files, failed = download_images(tmp_path / "teddy", found[:3], progress=False)
        assert len(files) == 3 and not failed
    finally: search._twin_search.close()


def test_online_default_is_openverse(monkeypatch):
    monkeypatch.delenv("COURSE_OFFLINE", raising=False)
    p = search.default_provider()
    assert isinstance(p, Openverse) and p.api == "https://api.openverse.org/v1/images/"
    assert p.page_url("grizzly bear", 2) == "https://api.openverse.org/v1/images/?q=grizzly+bear&page=2&page_size=20"
    assert p.min_interval >= 1 and p.page_size <= 20


def test_a_new_provider_is_a_small_class(api):
    class Listing(search.SearchProvider):
        "A provider whose API pages by `offset` and names its fields differently."
        name, min_interval = "listing", 0
        def page_url(self, term, page): return f"{api.api}?q={term}&page={page}&page_size=20"
        def parse(self, answer):
            return [ImageResult(url=r["url"], license="cc0") for r in answer["results"]], answer["page_count"]
    found = search_images("fox", 30, Listing())
    assert len(found) == 30 and found[0].license == "cc0"
