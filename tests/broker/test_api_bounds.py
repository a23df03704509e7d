"""The pull API over real HTTP answers 422 (or 404/416) to any out-of-range or hostile parameter, never 500."""

from __future__ import annotations

import httpx
import pytest

from broker import store, wire
from broker.api import ApiServer

from .helpers import T0_NS, make_blocks, start_cmd

TOKEN = "test-token-0123456789abcdef"
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    db = tmp_path_factory.mktemp("api") / "hub.sqlite"
    con = store.connect(db)
    cmd = start_cmd("s1", "T01", "C07")
    store.insert_command(con, "room-a", cmd, cmd.encode(), T0_NS)
    for b in make_blocks("client/eda", 32.0, 3, 64):
        store.insert_block(con, "unit-a", "raw", b, "s1", T0_NS, "room-a")
    con.commit()
    con.close()
    with ApiServer(db, TOKEN) as server, httpx.Client(base_url=server.url, timeout=30,
                                                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield http


@pytest.mark.parametrize("query", [
    {"since_ns": str(2**63)}, {"since_ns": str(-(2**63) - 1)}, {"since_ns": "9" * 400}, {"since_ns": "9" * 5000},
    {"offset": str(2**63)}, {"offset": "9" * 400}, {"offset": "-1"}, {"limit": "0"}, {"limit": "1001"},
    {"limit": str(2**64)}, {"since_ns": "1e400"}, {"since_ns": "nan"}, {"offset": "inf"}, {"since_ns": "12abc"},
])
def test_out_of_range_parameters_are_422(api, query):
    r = api.get("/v1/sessions", params=query)
    assert r.status_code == 422, (query, r.status_code, r.text[:300])
    assert "detail" in r.json()


@pytest.mark.parametrize("query, total", [
    ({"since_ns": str(INT64_MAX)}, 0), ({"since_ns": str(-(2**63))}, 1), ({"offset": str(INT64_MAX)}, 1),
])
def test_int64_edges_are_answered(api, query, total):
    r = api.get("/v1/sessions", params=query)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["total"] == total
    if "offset" in query:
        assert r.json()["sessions"] == [] and r.json()["next_offset"] is None


@pytest.mark.parametrize("path", [
    "/v1/sessions/%00", "/v1/sessions/%ED%A0%80", "/v1/sessions/" + "x" * 5000, "/v1/sessions/s1%0A",
    "/v1/sessions/%ED%A0%80/files", "/v1/sessions/s1/files/%00", "/v1/sessions/%FF/metrics.csv",
    "/v1/sessions/%FF/archive.tar", "/v1/sessions/%FF/physio",
])
def test_hostile_session_and_file_names_are_404(api, path):
    assert api.get(path).status_code == 404


@pytest.mark.parametrize("rng", ["bytes=" + "9" * 19 + "-", "bytes=" + "9" * 5000 + "-", "bytes=-5", "bytes=1-2",
                                 "bytes=99999999-"])
def test_hostile_ranges_are_416(api, rng):
    name = next(f["name"] for f in api.get("/v1/sessions/s1/files").json()["files"])
    r = api.get(f"/v1/sessions/s1/files/{name}", headers={"Range": rng})
    assert r.status_code == 416, (rng, r.status_code)


def test_the_session_is_there(api):
    """The fixture's session is served, so the refusals above are about the parameters, not an empty hub."""
    r = api.get("/v1/sessions")
    assert r.status_code == 200 and r.json()["total"] == 1
    assert wire.SESSION_RE.fullmatch(r.json()["sessions"][0]["session"])
