"""The pull API over real HTTP (uvicorn) on a database the recorder filled from a real Mosquitto, and the
lab puller against it: auth, paging, since-filter, BIDS-physio round trip, archive checksums, resume."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile

import httpx
import numpy as np
import pandas as pd
import pytest

from broker import wire
from broker.api import ApiServer
from broker.recorder import Recorder
from dyadsync.cli import main as cli_main
from lab.puller import LabPuller, PullError

from ..conftest import ROOM
from .helpers import T0_NS, ack, client, close, make_blocks, publish_all, start_cmd, wait

TOKEN = "test-token-0123456789abcdef"


class Interrupted(Exception):
    pass


@pytest.fixture
def recorded(hub_factory, tmp_path):
    """Two recorded sessions; returns (db path, sent data, publish function for more, recorder)."""
    cfg, layout, proc = hub_factory()
    auth = layout.auth
    db = tmp_path / "hub.sqlite"
    a = client(proc.host, proc.port, "unit-a", auth.units["unit-a"])
    console = client(proc.host, proc.port, *auth.service_user("console"))
    rec = Recorder(db, ROOM, proc.host, proc.port, *auth.service_user("recorder")).start()
    sent = {}
    msgs_console = [(wire.cmd_topic(ROOM), start_cmd("s1", "T01", "C07").encode()),
                    (wire.cmd_topic(ROOM), start_cmd("s2", "T02", "C08", T0_NS + 10**12).encode())]
    publish_all(console, msgs_console)
    publish_all(a, [ack("unit-a", "s1-start"), ack("unit-a", "s2-start")])  # the unit accepted both
    eda = make_blocks("client/eda", 32.0, 30, 64, seed=1, t0_ns=T0_NS + 250_000_000)
    eda = [b for b in eda if b.seq != 11]  # one lost block -> n/a rows in the physio file
    ppg = make_blocks("therapist/ppg", 100.0, 20, 200, seed=2)
    hr = make_blocks("therapist/hr", 4.0, 10, 4, seed=3)
    sent["s1"] = {"raw/client/eda": eda, "raw/therapist/ppg": ppg, "feat/therapist/hr": hr}
    msgs = [(wire.raw_topic(ROOM, "unit-a", "client/eda"), wire.encode_block(b, "s1")) for b in eda]
    msgs += [(wire.raw_topic(ROOM, "unit-a", "therapist/ppg"), wire.encode_block(b, "s1")) for b in ppg]
    msgs += [(wire.feat_topic(ROOM, "unit-a", "therapist/hr"), wire.encode_block(b, "s1")) for b in hr]
    s2 = make_blocks("client/eda", 32.0, 5, 64, seed=4, t0_ns=T0_NS + 10**12)
    sent["s2"] = {"raw/client/eda": s2}
    msgs += [(wire.raw_topic(ROOM, "unit-a", "client/eda"), wire.encode_block(b, "s2")) for b in s2]
    metrics = [wire.Metric("s1", k, "sync_eda", T0_NS + k * 10**9, T0_NS + (k + 30) * 10**9,
                           {"r0": 0.25 * k - 0.3, "peak_lag_s": None if k == 2 else 1.5 * k}) for k in range(6)]
    msgs += [(wire.metric_topic(ROOM, "unit-a", "sync_eda"), m.encode()) for m in metrics]
    sent["metrics"] = metrics
    publish_all(a, msgs)
    n_blocks = len(eda) + len(ppg) + len(hr) + len(s2)
    assert wait(lambda: rec.counts["stored_raw"] + rec.counts["stored_feat"] == n_blocks
                and rec.counts["stored_metric"] == len(metrics)), dict(rec.counts)

    def more(session: str, blocks) -> None:
        before = rec.counts["stored_raw"]
        publish_all(a, [(wire.raw_topic(ROOM, "unit-a", b.stream), wire.encode_block(b, session)) for b in blocks])
        assert wait(lambda: rec.counts["stored_raw"] == before + len(blocks))

    yield db, sent, more
    rec.stop()
    close(a, console)


@pytest.fixture
def api(recorded):
    db = recorded[0]
    with ApiServer(db, TOKEN) as server:
        yield server


def _get(api, path, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(api.url + path, headers=headers, timeout=30, **kw)


def test_api_needs_the_token(api):
    for path in ("/v1/sessions", "/v1/sessions/s1", "/v1/sessions/s1/archive.tar", "/v1/sessions/s1/metrics.csv"):
        assert _get(api, path, token=None).status_code == 401, path
        r = _get(api, path, token="wrong-token-wrong-token")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
    assert _get(api, "/v1/sessions").status_code == 200
    spec = httpx.get(api.url + "/openapi.json").json()
    assert "/v1/sessions/{session}/archive.tar" in spec["paths"]


def test_sessions_paging_since_and_summary(api, recorded):
    r = _get(api, "/v1/sessions", params={"limit": 1}).json()
    assert r["total"] == 2 and len(r["sessions"]) == 1 and r["next_offset"] == 1
    r2 = _get(api, "/v1/sessions", params={"limit": 1, "offset": 1}).json()
    assert r2["next_offset"] is None
    sessions = r["sessions"] + r2["sessions"]
    assert {s["session"] for s in sessions} == {"s1", "s2"}
    newest = max(s["updated_ns"] for s in sessions)
    assert _get(api, "/v1/sessions", params={"since_ns": newest}).json()["sessions"] == []
    oldest = min(s["updated_ns"] for s in sessions)
    assert len(_get(api, "/v1/sessions", params={"since_ns": oldest}).json()["sessions"]) == 1
    summary = _get(api, "/v1/sessions/s1").json()
    assert summary["therapist_code"] == "T01" and summary["client_code"] == "C07"
    assert summary["quality"]["gaps"] == 1 and summary["quality"]["missing_blocks"] == 1
    assert "hub_malformed" in summary["quality"]
    assert _get(api, "/v1/sessions/nope").status_code == 404


def test_metrics_csv(api, recorded):
    text = _get(api, "/v1/sessions/s1/metrics.csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    sent = recorded[1]["metrics"]
    assert [int(r["seq"]) for r in rows] == [m.seq for m in sent]
    for r, m in zip(rows, sent, strict=True):
        assert float(r["r0"]) == m.values["r0"]
        lag = m.values["peak_lag_s"]
        assert (r["peak_lag_s"] == "") if lag is None else float(r["peak_lag_s"]) == lag


def test_bids_physio_round_trip(api, recorded):
    names = _get(api, "/v1/sessions/s1/physio").json()["files"]
    tsv = "sub-C07_ses-s1_task-therapy_recording-unitaraweda_physio.tsv.gz"
    assert tsv in names and tsv.replace(".tsv.gz", ".json") in names
    sidecar = _get(api, f"/v1/sessions/s1/files/{tsv.replace('.tsv.gz', '.json')}").json()
    eda = recorded[1]["s1"]["raw/client/eda"]
    assert sidecar["SamplingFrequency"] == 32.0 and sidecar["Columns"] == ["eda", "flags"]
    assert sidecar["StartTime"] == pytest.approx(0.25)
    df = pd.read_csv(io.BytesIO(_get(api, f"/v1/sessions/s1/files/{tsv}").content), sep="\t", header=None,
                     compression="gzip", na_values="n/a", names=sidecar["Columns"])
    expected = np.full(30 * 64, np.nan, np.float32)
    for b in eda:
        expected[b.seq * 64:(b.seq + 1) * 64] = b.values
    got = df["eda"].to_numpy().astype(np.float32)
    np.testing.assert_array_equal(got, expected)  # exact float32 values, NaN where the lost block was
    assert df["flags"].iloc[2 * 64] == 1 and np.isnan(df["flags"].iloc[11 * 64])
    ppg_name = "sub-T01_ses-s1_task-therapy_recording-unitarawppg_physio.tsv.gz"
    ppg = pd.read_csv(io.BytesIO(_get(api, f"/v1/sessions/s1/files/{ppg_name}").content), sep="\t", header=None,
                      compression="gzip")
    np.testing.assert_array_equal(ppg[0].to_numpy().astype(np.float32),
                                  np.concatenate([b.values for b in recorded[1]["s1"]["raw/therapist/ppg"]]))


def test_archive_has_valid_checksums(api):
    r = _get(api, "/v1/sessions/s1/archive.tar")
    assert r.status_code == 200
    tar = tarfile.open(fileobj=io.BytesIO(r.content))
    members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    sums = members.pop("s1/SHA256SUMS").decode().splitlines()
    assert len(sums) == len(members) >= 9
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256(members[f"s1/{name}"]).hexdigest() == digest, name
    manifest = _get(api, "/v1/sessions/s1/files").json()["files"]
    assert {m["name"]: m["sha256"] for m in manifest} == {ln.split("  ")[1]: ln.split("  ")[0] for ln in sums}
    assert json.loads(members["s1/session.json"])["session"] == "s1"


def test_lab_pull_incremental_and_resumable(api, recorded, tmp_path):
    dest = tmp_path / "lab"
    seen = {"n": 0}

    def interrupt(n: int) -> None:
        seen["n"] += n
        if seen["n"] > 20_000:
            raise Interrupted

    # First run is interrupted in the middle of a file: partial file and state remain.
    with LabPuller(api.url, TOKEN, dest, progress=False, on_bytes=interrupt, chunk_bytes=4096) as p, \
            pytest.raises(Interrupted):
        p.pull()
    assert list((dest / ".partial").rglob("*.part"))
    with LabPuller(api.url, TOKEN, dest, progress=False) as p:
        r1 = p.pull()
    assert r1.resumed_files >= 1 and r1.sessions_pulled + r1.sessions_skipped == 2
    for session in ("s1", "s2"):
        sdir = dest / "sourcedata" / ROOM / session
        for line in (sdir / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split("  ")
            assert hashlib.sha256((sdir / name).read_bytes()).hexdigest() == digest
    # Nothing changed: nothing is downloaded.
    with LabPuller(api.url, TOKEN, dest, progress=False) as p:
        r2 = p.pull()
    assert r2.sessions_seen == 0 and r2.bytes_downloaded == 0
    # s2 grows: only s2 comes again, and only its changed files.
    more = make_blocks("client/eda", 32.0, 8, 64, seed=4, t0_ns=T0_NS + 10**12)[5:]
    recorded[2]("s2", more)
    with LabPuller(api.url, TOKEN, dest, progress=False) as p:
        r3 = p.pull()
    assert r3.sessions_seen == 1 and r3.sessions_pulled == 1 and r3.files_unchanged >= 1
    tsv = dest / "sourcedata" / ROOM / "s2" / "sub-C08_ses-s2_task-therapy_recording-unitaraweda_physio.tsv.gz"
    assert pd.read_csv(tsv, sep="\t", header=None).shape[0] == 8 * 64
    # A wrong token is a clear error; the CLI works end to end.
    with pytest.raises(PullError, match="401"), LabPuller(api.url, "x" * 20, tmp_path / "other", progress=False) as p:
        p.pull()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert cli_main(["lab", "pull", "--hub", api.url, "--token-file", str(token_file), "--no-progress",
                     str(tmp_path / "lab2")]) == 0
    assert (tmp_path / "lab2" / "sourcedata" / ROOM / "s1" / "metrics.csv").exists()


def test_lab_pull_session_changing_during_download(api, recorded, tmp_path, caplog):
    """The hub records more while a session is being pulled: the checksum catches it, the puller fetches
    the new manifest and ends with files that match the hub's current state."""
    fired = {"done": False}

    def grow(_n: int) -> None:
        if not fired["done"]:
            fired["done"] = True
            # Existing streams grow, so a file generated after this differs from the first manifest.
            recorded[2]("s1", make_blocks("client/eda", 32.0, 33, 64, seed=7, t0_ns=T0_NS + 250_000_000)[30:])
            recorded[2]("s2", make_blocks("client/eda", 32.0, 8, 64, seed=8, t0_ns=T0_NS + 10**12)[5:])

    dest = tmp_path / "lab"
    with LabPuller(api.url, TOKEN, dest, progress=False, on_bytes=grow) as p:
        r = p.pull()
    assert fired["done"] and r.failed == [] and r.changing == [] and r.sessions_pulled == 2
    assert "changed while pulling" in caplog.text  # the checksum caught the change and the manifest was refetched
    for session in ("s1", "s2"):
        manifest = _get(api, f"/v1/sessions/{session}/files").json()["files"]
        for m in manifest:
            assert hashlib.sha256((dest / "sourcedata" / ROOM / session / m["name"]).read_bytes()).hexdigest() == m["sha256"]
    eda = pd.read_csv(dest / "sourcedata" / ROOM / "s1" / "sub-C07_ses-s1_task-therapy_recording-unitaraweda_physio.tsv.gz",
                      sep="\t", header=None)
    assert eda.shape[0] == 33 * 64
