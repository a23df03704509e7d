"""The lab's BIDS dataset, checked by the official validator (bids-validator-deno) and loaded by pybids.

Data: the demo session (simulated room, real broker, real hub SQLite, markers added the way the recorder
stores them) and hub databases built with broker.store: a two-unit session (therapist at one unit, client at
the other), a session still running, and a second room. Everything goes through the real pull API over HTTP.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker import store, wire
from broker.api import ApiServer
from firmware_bridge.block import SampleBlock
from lab import bids
from lab.puller import LabPuller

TOKEN = "bids-test-token-0123456789"
T0 = 1_790_000_000_000_000_000


def validate(root: Path) -> tuple[int, list[dict], list[dict]]:
    """Run the official validator (recursing into derivatives/): (exit code, errors, warnings)."""
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    proc = subprocess.run([exe, "--recursive", "--format", "json", str(root)], capture_output=True, text=True,
                          timeout=300)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"validator gave no JSON (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    issues = out["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    warnings = [i for i in issues if i["severity"] == "warning"]
    codes = sorted({f"{i['code']}:{i.get('subCode') or ''}" for i in warnings})
    print(f"validator on {root}: exit {proc.returncode}, {len(errors)} errors, warnings: {', '.join(codes)}")
    return proc.returncode, errors, warnings


def assert_valid(root: Path) -> None:
    rc, errors, _ = validate(root)
    assert not errors and rc == 0, json.dumps(errors, indent=1)[:4000]


def pull(db: Path, dest: Path) -> object:
    with ApiServer(db, TOKEN) as srv:
        return pull_from(srv.url, dest)


def pull_from(url: str, dest: Path) -> object:
    with LabPuller(url, TOKEN, dest, progress=False) as puller:
        return puller.pull()


def add_marker(con: sqlite3.Connection, room: str, session: str, label: str, time_ns: int) -> None:
    c = wire.Command(id=f"m-{session}-{time_ns}", cmd="marker", session=session, time_ns=time_ns, label=label)
    store.insert_command(con, room, c, c.encode(), time_ns)


def make_hub(path: Path, room: str, sessions: list[dict]) -> None:
    """Sessions stored as the recorder stores them. Each dict: session, t, c (codes), two_units, stopped, t0."""
    con = store.connect(path)
    rng = np.random.default_rng(len(room))
    for s in sessions:
        t0, sid = s["t0"], s["session"]
        start = wire.Command(id=f"start-{sid}", cmd="start", session=sid, time_ns=t0,
                             participants={"therapist": s["t"], "client": s["c"]})
        store.insert_command(con, room, start, start.encode(), t0)
        for role in ("therapist", "client"):
            unit = "unit-b" if (s["two_units"] and role == "client") else "unit-a"
            for kind, signal, rate, per in (("raw", "eda", 32.0, 32), ("feat", "eda", 4.0, 4), ("feat", "hr", 4.0, 4)):
                for seq in range(40):
                    if kind == "raw" and role == "client" and seq == 7:
                        continue  # a block lost in transit
                    vals = (rng.standard_normal(per) * 2 + (70 if signal == "hr" else 5)).astype(np.float32)
                    b = SampleBlock(f"{role}/{signal}", seq, t0 + 250_000_000 + seq * 1_000_000_000, rate, vals,
                                    flags=2 if seq == 3 else 0)
                    store.insert_block(con, unit, kind, b, sid, t0, room)
        for k in range(12):
            vals = {"r0": float(rng.uniform(-1, 1)), "inphase_lag_s": 0.25 * k - 1.0,
                    "therapist_led": float("nan") if k == 4 else float(rng.normal())}
            m = wire.Metric(sid, k, "sync_eda", t0 + (10 + k) * 10**9, t0 + (40 + k) * 10**9, vals)
            store.insert_metric(con, "unit-a", m, t0, room)
        add_marker(con, room, sid, "role play begins", t0 + 12_345_678_901)
        add_marker(con, room, sid, "break", t0 + 30_000_000_001)
        if s["stopped"]:
            stop = wire.Command(id=f"stop-{sid}", cmd="stop", session=sid, time_ns=t0 + 45 * 10**9)
            store.insert_command(con, room, stop, stop.encode(), t0 + 45 * 10**9)
        con.commit()
    con.close()


def stop(path: Path, room: str, sid: str, t_ns: int) -> None:
    con = store.connect(path)
    c = wire.Command(id=f"stop-{sid}", cmd="stop", session=sid, time_ns=t_ns)
    store.insert_command(con, room, c, c.encode(), t_ns)
    con.commit()
    con.close()


def read_physio(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, names=columns, compression="gzip", na_values="n/a",
                       keep_default_na=False)


# ------------------------------------------------------------------------------------------------ tests
def test_pulled_demo_is_valid_bids_with_exact_values(demo_copy, tmp_path):
    from bids import BIDSLayout

    db, session = demo_copy
    con = store.connect(db)
    meta = store.get_session(con, session)
    t_start = meta["started_ns"]
    add_marker(con, meta["room"], session, "homework discussed", t_start + 61_250_000_123)
    con.commit()
    con.close()
    dest = tmp_path / "lab"
    rep = pull(db, dest)
    assert rep.sessions_pulled == 1 and rep.bids.written == [f"{meta['room']}/{session}"]
    assert_valid(dest)

    layout = BIDSLayout(dest, derivatives=True)
    assert sorted(layout.get_subjects()) == ["C01", "T01"] and layout.get_tasks() == ["therapy"]
    ses = bids.bids_label(session)
    con = store.connect(db, readonly=True)
    n_files = 0
    for role, sub in (("therapist", "T01"), ("client", "C01")):
        for kind, signal, rec in (("raw", "eda", "eda"), ("raw", "ppg", "ppg"), ("feat", "eda", "edafeat"),
                                  ("feat", "hr", "hrfeat")):
            (f,) = layout.get(subject=sub, session=ses, recording=rec, suffix="physio", extension=".tsv.gz")
            md = f.get_metadata()
            for key in ("SamplingFrequency", "StartTime", "Columns", "PhysioType", "TaskName"):
                assert key in md, (f.filename, key)
            assert md["Columns"] == [signal, "flags"] and md[signal]["Units"] == bids.UNITS[signal]
            t_ns, values, rate = store.read_stream(con, session, f"{role}/{signal}", kind)
            assert md["SamplingFrequency"] == rate and md["StartTimeUTCns"] == t_ns[0]
            assert md["StartTime"] == pytest.approx((t_ns[0] - t_start) / 1e9, abs=1e-9)
            got = read_physio(Path(f.path), md["Columns"])[signal].to_numpy().astype(np.float32)
            np.testing.assert_array_equal(got, values)  # the float32 round trip is exact
            n_files += 1
    assert n_files == 8
    # events: the marker at its onset in seconds from the session start, in both people's folders
    for sub in ("T01", "C01"):
        (ev,) = layout.get(subject=sub, suffix="events", extension=".tsv")
        df = pd.read_csv(ev.path, sep="\t", dtype=str)
        row = df[(df["trial_type"] == "marker") & (df["value"] == "homework discussed")].iloc[0]
        assert row["onset"] == "61.250000123"
        # the demo's own markers are the simulator's truth segments (5), then the one added here
        assert sorted(df["trial_type"]) == ["marker"] * 6 + ["session_start", "session_stop"]
        assert df["onset"].astype(float).is_monotonic_increasing  # the demo's stop (wall clock) precedes the marker
    # derivatives: the pairing and the live metrics, exactly the hub's values
    (dyads,) = layout.get(scope="dyadsync", desc="dyads", extension=".tsv")
    d = pd.read_csv(dyads.path, sep="\t")
    assert d[["therapist_id", "client_id", "dyadsync_session"]].values.tolist() == [["sub-T01", "sub-C01", session]]
    for name in ("sync_eda", "sync_hr"):
        (mf,) = layout.get(scope="dyadsync", subject="C01", desc=bids.bids_label(name), extension=".tsv")
        side = mf.get_metadata() or json.loads(Path(mf.path).with_suffix(".json").read_text())
        df = pd.read_csv(mf.path, sep="\t", na_values="n/a", keep_default_na=False)
        live = list(store.read_metrics(con, session, name))
        assert len(df) == len(live) > 100
        for col in df.columns:
            assert col in side and side[col]["Description"], col  # every column described
        assert "therapist leads" in side["inphase_lag_s"]["Description"]
        for (_seq, ws, _we, values), (_, r) in zip(live, df.iterrows(), strict=True):
            assert int(r["window_start_utc_ns"]) == ws
            for k, v in values.items():
                assert (np.isnan(v) and np.isnan(r[k])) or r[k] == v, (k, v, r[k])
    con.close()
    # the report reads the pulled dataset (the hub export kept in sourcedata/), and the BIDS tree alone gives
    # the same series, metrics, markers and report numbers as the hub database
    from lab.analysis.source import find_session_dirs, load_from_db, load_from_folder
    from lab.report import write_report

    assert "homework discussed" in [m["label"] for m in load_from_folder(dest, session).markers]
    bare = tmp_path / "bare"
    shutil.copytree(dest, bare, ignore=shutil.ignore_patterns("sourcedata"))
    assert find_session_dirs(bare) == [bare / "sub-C01" / f"ses-{ses}"]
    a, b = load_from_db(db, session), load_from_folder(bare, session)
    assert (b.therapist_code, b.client_code, b.started_ns, b.stopped_ns) == ("T01", "C01", t_start, meta["stopped_ns"])
    assert b.markers == a.markers and set(a.streams) == set(b.streams)
    for key, s in a.streams.items():
        o = b.streams[key]
        assert (o.t0_ns, o.rate_hz) == (s.t0_ns, s.rate_hz)
        np.testing.assert_array_equal(o.values, s.values)  # NaN where NaN, the rest equal
    assert set(a.metrics) == set(b.metrics)
    for name, rows in a.metrics.items():
        assert [(r.seq, r.window_start_ns, r.window_end_ns) for r in rows] == \
            [(r.seq, r.window_start_ns, r.window_end_ns) for r in b.metrics[name]]
        for x, y in zip(rows, b.metrics[name], strict=True):
            np.testing.assert_array_equal([x.values[k] for k in sorted(x.values)], [y.values[k] for k in sorted(x.values)])
    _, an_db = write_report(session, db=db, out=tmp_path / "a.html", n_surrogates=5)
    _, an_bids = write_report(session, folder=bare, out=tmp_path / "b.html", n_surrogates=5)
    ra, rb = an_db.index_rows(), an_bids.index_rows()
    assert len(ra) == len(rb) > 20
    for x, y in zip(ra, rb, strict=True):
        assert x["index"] == y["index"] and ((np.isnan(x["value"]) and np.isnan(y["value"])) or x["value"] == y["value"])


def test_two_unit_session_many_rooms_incremental_and_running(tmp_path):

    hub_a, hub_b, dest = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "lab"
    make_hub(hub_a, "room-a", [
        {"session": "s-2units", "t": "T-01", "c": "C07", "two_units": True, "stopped": True, "t0": T0},
        {"session": "s-live", "t": "T-01", "c": "C08", "two_units": False, "stopped": False, "t0": T0 + 10**13},
    ])
    make_hub(hub_b, "room-b", [
        # the same session id in another room, the same therapist: the label gets the room in front
        {"session": "s-2units", "t": "T-01", "c": "C09", "two_units": True, "stopped": True, "t0": T0 + 10**12},
    ])
    with ApiServer(hub_a, TOKEN) as srv_a, ApiServer(hub_b, TOKEN) as srv_b:
        _rooms_into_one_dataset(hub_a, srv_a.url, srv_b.url, dest)


def _rooms_into_one_dataset(hub_a, url_a, url_b, dest):
    from bids import BIDSLayout

    r1 = pull_from(url_a, dest)
    assert r1.bids.written == ["room-a/s-2units"] and r1.bids.running == ["room-a/s-live"]
    assert_valid(dest)
    assert not list(dest.glob("sub-*/ses-slive")) and (dest / "sourcedata/room-a/s-live/SHA256SUMS").is_file()
    # two units: the therapist's streams from unit-a, the client's from unit-b
    beh = dest / "sub-C07" / "ses-s2units" / "beh"
    names = sorted(p.name for p in beh.glob("*_physio.tsv.gz"))
    assert names == [f"sub-C07_ses-s2units_task-therapy_acq-unitb_recording-{r}_physio.tsv.gz"
                     for r in ("eda", "edafeat", "hrfeat")]
    raw = read_physio(beh / names[0], ["eda", "flags"])
    assert len(raw) == 40 * 32 and raw["eda"].iloc[7 * 32:8 * 32].isna().all() and raw["flags"].iloc[3 * 32] == 2

    # the running session stops: the next run writes it; then the second room lands in the same dataset
    stop(hub_a, "room-a", "s-live", T0 + 10**13 + 50 * 10**9)
    r2 = pull_from(url_a, dest)
    assert r2.sessions_pulled == 1 and r2.bids.written == ["room-a/s-live"] and r2.bids.unchanged == 1
    assert_valid(dest)
    r3 = pull_from(url_b, dest)
    assert r3.bids.written == ["room-b/s-2units"]
    assert_valid(dest)
    again = pull_from(url_a, dest)  # nothing new: nothing rewritten, still valid
    assert again.sessions_seen == 0 and again.bids.written == [] and again.bids.unchanged == 3

    parts = pd.read_csv(dest / "participants.tsv", sep="\t")
    assert parts.set_index("participant_id")["role"].to_dict() == {
        "sub-C07": "client", "sub-C08": "client", "sub-C09": "client", "sub-T01": "therapist"}
    assert parts.set_index("participant_id")["code"]["sub-T01"] == "T-01"
    sessions = pd.read_csv(dest / "sub-T01" / "sub-T01_sessions.tsv", sep="\t")
    assert sorted(sessions["session_id"]) == ["ses-roombs2units", "ses-s2units", "ses-slive"]
    assert sorted(sessions["partner_id"]) == ["sub-C07", "sub-C08", "sub-C09"]
    dyads = pd.read_csv(dest / "derivatives/dyadsync/task-therapy_desc-dyads_beh.tsv", sep="\t")
    assert sorted(zip(dyads["room"], dyads["client_id"], strict=True)) == [
        ("room-a", "sub-C07"), ("room-a", "sub-C08"), ("room-b", "sub-C09")]
    assert set(dyads["units"]) == {"unit-a,unit-b", "unit-a"}
    layout = BIDSLayout(dest, derivatives=True)
    assert len(layout.get_subjects()) == 4 and len(layout.get(suffix="events", extension=".tsv")) == 6
    # metric values of the two-unit session, exact (None became n/a), onsets of markers exact
    met = pd.read_csv(dest / "derivatives/dyadsync/sub-C07/ses-s2units/beh/"
                      "sub-C07_ses-s2units_task-therapy_desc-synceda_beh.tsv", sep="\t", na_values="n/a",
                      keep_default_na=False)
    con = store.connect(hub_a, readonly=True)
    live = list(store.read_metrics(con, "s-2units", "sync_eda"))
    con.close()
    assert met["r0"].tolist() == [v["r0"] for *_, v in live] and np.isnan(met["therapist_led"][4])
    ev = pd.read_csv(beh / "sub-C07_ses-s2units_task-therapy_events.tsv", sep="\t", dtype=str)
    assert ev["onset"].tolist() == ["0", "12.345678901", "30.000000001", "45"]


def test_study_finds_each_session_once_and_an_old_layout_is_moved(tmp_path):
    """`dyadsync study` on a pulled dataset finds each session once (in sourcedata/, not in the BIDS tree);
    a folder pulled with the layout before BIDS (DEST/<room>/<session>/) is moved into sourcedata/."""
    from lab.analysis.source import find_session_dirs

    hub = tmp_path / "a.sqlite"
    make_hub(hub, "room-a", [{"session": f"s{i}", "t": "T01", "c": f"C0{i}", "two_units": False, "stopped": True,
                              "t0": T0 + i * 10**12} for i in range(2)])
    dest = tmp_path / "lab"
    with ApiServer(hub, TOKEN) as srv:
        pull_from(srv.url, dest)
        assert [p.name for p in find_session_dirs(dest)] == ["s0", "s1"]
        # make it look like a pull of the earlier version: flat room folders, one-hub state, no BIDS files
        state = json.loads((dest / ".dyadsync-pull.json").read_text())["hubs"][srv.url]
        old = tmp_path / "old"
        old.mkdir()
        shutil.move(dest / "sourcedata" / "room-a", old / "room-a")
        (old / ".dyadsync-pull.json").write_text(json.dumps({"hub": srv.url, **state}))
        r = pull_from(srv.url, old)
    assert r.sessions_seen == 0 and sorted(r.bids.written) == ["room-a/s0", "room-a/s1"]
    assert not (old / "room-a").exists() and [p.name for p in find_session_dirs(old)] == ["s0", "s1"]
    assert_valid(old)


@pytest.mark.parametrize("break_it", ["no_dataset_description", "no_sampling_frequency", "events_without_onset"])
def test_validator_catches_a_broken_writer(tmp_path, monkeypatch, break_it):
    """Change one thing in the writer and the official validator must report an error."""
    hub = tmp_path / "a.sqlite"
    make_hub(hub, "room-a", [{"session": "s1", "t": "T01", "c": "C01", "two_units": False, "stopped": True,
                              "t0": T0}])
    if break_it == "no_dataset_description":
        real = bids._write_atomic
        monkeypatch.setattr(bids, "_write_atomic",
                            lambda path, data: None if path.name == "dataset_description.json"
                            and "derivatives" not in path.parts else real(path, data))
    elif break_it == "no_sampling_frequency":
        real_side = bids._physio_sidecar
        monkeypatch.setattr(bids, "_physio_sidecar",
                            lambda *a: {k: v for k, v in real_side(*a).items() if k != "SamplingFrequency"})
    else:
        real_ev = bids._events

        def events(meta):
            tsv, side = real_ev(meta)
            return tsv.replace(b"onset\t", b"time\t", 1), side

        monkeypatch.setattr(bids, "_events", events)
    bids.mirror_from_db(hub, tmp_path / "ds")
    bids.sync_dataset(tmp_path / "ds")
    rc, errors, _ = validate(tmp_path / "ds")
    assert rc != 0 and errors, break_it


def test_lab_bids_cli_from_a_hub_database(tmp_path):
    from dyadsync.cli import main as cli_main

    hub = tmp_path / "a.sqlite"
    make_hub(hub, "room-a", [{"session": "s1", "t": "T01", "c": "C01", "two_units": False, "stopped": True,
                              "t0": T0}])
    assert cli_main(["lab", "bids", "--db", str(hub), str(tmp_path / "ds")]) == 0
    assert_valid(tmp_path / "ds")
    with gzip.open(next((tmp_path / "ds").glob("sub-T01/ses-s1/beh/*recording-eda_physio.tsv.gz")), "rt") as f:
        assert len(f.read().splitlines()) == 40 * 32
    # a new version of a hub export that does not match its SHA256SUMS is refused (the lines in another order
    # make it a new version), the dataset keeps the version it has and stays valid
    sdir = tmp_path / "ds" / "sourcedata" / "room-a" / "s1"
    (sdir / "metrics.csv").write_text("damaged")
    sums = sdir / "SHA256SUMS"
    sums.write_text("".join(reversed(sums.read_text().splitlines(keepends=True))))
    assert cli_main(["lab", "bids", str(tmp_path / "ds")]) == 1
    assert_valid(tmp_path / "ds")
