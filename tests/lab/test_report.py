"""dyadsync report on a real demo session: numbers equal the unit's live metrics, loss/marker handling, pulled
folders, clear errors, and the page renders in headless Chromium with every plot loaded."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from broker import store
from core.vocab import BlockFlags
from dsp_ext.synchrony import WINDOW_VALUE_NAMES, SyncParams, wcc
from lab.analysis.source import (
    IncompleteSession,
    SessionNotFound,
    SourceError,
    load_from_db,
    load_from_folder,
)
from lab.report import write_report

from .conftest import REPO

N_SURR = 60


def _stored_features(con, session: str, signal: str) -> tuple[int, np.ndarray, np.ndarray, int]:
    t_t, v_t, _ = store.read_stream(con, session, f"therapist/{signal}")
    t_c, v_c, _ = store.read_stream(con, session, f"client/{signal}")
    assert t_t[0] == t_c[0]
    # The unit pairs the two people's bins as both become final; a stream whose features come later
    # (HR waits for the next beats) may end a few bins after the other, and those bins were never paired.
    n = min(len(v_t), len(v_c))
    assert max(len(v_t), len(v_c)) - n < 120  # the stop cuts the two streams where each had got to (< 30 s)
    # the windows that need the longer stream's last samples are not recomputed: the allowance in windows
    slack = (max(len(v_t), len(v_c)) - n) // round(SyncParams().inc_s * 4) + 2
    return int(t_t[0]), v_t[:n].astype(np.float64), v_c[:n].astype(np.float64), slack


@pytest.mark.parametrize("signal", ["eda", "hr"])
def test_stored_features_reproduce_the_live_metrics(demo_db, signal):
    """Independent of the report code: wcc on the stored 4 Hz features equals what the unit published live."""
    db, session = demo_db
    con = store.connect(db, readonly=True)
    t0, t, c, slack = _stored_features(con, session, signal)
    res = wcc(t, c, SyncParams())
    live = list(store.read_metrics(con, session, f"sync_{signal}"))
    con.close()
    # the recompute from the stored features and the live windows agree but for the last few, where the session's
    # stop cut one person's stream shorter than the other's (how much depends on how busy the unit was)
    assert len(live) > 100 and abs(len(res) - len(live)) <= slack, (len(live), len(res), slack)
    n_checked = 0
    worst = 0.0
    for _seq, ws, _we, values in live:
        i = (ws - t0) // 250_000_000
        k = (i - res.params.lag) // res.params.inc
        if k >= len(res.window_start):
            continue
        n_checked += 1
        assert res.window_start[k] == i
        for name in WINDOW_VALUE_NAMES:
            a, b = values[name], float(getattr(res, name)[k])
            assert math.isnan(a) == math.isnan(b), (name, k, a, b)
            if not math.isnan(a):
                worst = max(worst, abs(a - b))
    assert worst <= 1e-6, worst
    assert n_checked >= len(live) - slack


def test_report_numbers_equal_the_live_metrics(demo_db, tmp_path):
    db, session = demo_db
    out, an = write_report(session, db=db, out=tmp_path / "r.html", n_surrogates=N_SURR)
    page = out.read_text()
    con = store.connect(db, readonly=True)
    for signal in ("eda", "hr"):
        ch = an.channels[signal]
        assert ch.live is not None and ch.live.comparable
        slack = _stored_features(con, session, signal)[3]
        assert ch.live.n_live > 100 and ch.live.n_compared >= ch.live.n_live - slack
        assert abs(len(ch.res) - ch.live.n_live) <= slack
        assert ch.live.max_abs_diff <= 1e-6
        live = [v for *_, v in store.read_metrics(con, session, f"sync_{signal}")]
        for key, label in (("inphase_z", "in-phase peak z, mean"), ("therapist_led", "therapist-led z, mean"),
                           ("client_led", "client-led z, mean")):
            row = next(r for r in an.index_rows() if r["channel"] == signal and r["index"] == label)
            # the session mean is over the recomputed windows, which equal the live ones (max_abs_diff above);
            # with the same number of windows it is the live metrics' own mean
            expect = float(np.nanmean(getattr(ch.res, key)))
            assert abs(row["value"] - expect) <= 1e-9
            if len(ch.res) == ch.live.n_live:
                assert abs(row["value"] - float(np.nanmean([v[key] for v in live]))) <= 1e-6
            assert (f"{expect:.3g}" if abs(expect) < 0.01 else f"{expect:.3f}") in page  # the page's 3 digits
    con.close()
    for name in ("Signals", "Session indices", "EDA synchrony", "HR synchrony", "Regulation: RSA and RMSSD",
                 "Markers", "Data quality", "Agreement with the live metrics"):
        assert f">{name}<" in page
    # every plot is embedded; nothing is fetched from elsewhere
    imgs = re.findall(r'<img src="([^"]+)"', page) + re.findall(r"<img src='([^']+)'", page)
    assert len(imgs) >= 10 and all(u.startswith("data:image/png;base64,") for u in imgs)
    assert "http://" not in page and "https://" not in page
    # RSA and RMSSD of both people (raw PPG through dsp_ext.ppg/hrv), surrogate p-values in the table
    assert set(an.hrv) == {"therapist", "client"}
    for h in an.hrv.values():
        assert np.isfinite(h.rsa_ln_ms2).sum() >= 4 and np.all(h.rsa_ln_ms2[np.isfinite(h.rsa_ln_ms2)] > 0)
        assert np.nanmean(h.rmssd_ms) > 5
    sur = an.channels["eda"].surrogates["inphase_z"]
    assert sur.n == N_SURR and 1 / (N_SURR + 1) <= sur.p_value <= 1


def test_losses_and_markers_are_shown_and_lost_windows_not_compared(demo_copy, tmp_path):
    db, session = demo_copy
    con = sqlite3.connect(db)
    t_start = con.execute("SELECT started_ns FROM sessions WHERE session=?", (session,)).fetchone()[0]
    # a block of the therapist's EDA feature lost in transit, and a marker set at 100 s
    assert con.execute("DELETE FROM blocks WHERE session=? AND kind='feat' AND stream='therapist/eda' AND seq=80",
                       (session,)).rowcount == 1
    payload = json.dumps({"id": "m1", "cmd": "marker", "session": session, "label": "rupture", "time_ns": t_start})
    con.execute("INSERT INTO commands VALUES(?,?,?,?,?,?,?,?)",
                ("m1", "marker", session, "rupture", t_start + 100_000_000_000, payload, t_start, "demo-room"))
    # the client's EDA electrode came off for one raw block: open circuit (~0 µS) flagged CONTACT_LOST
    n, = con.execute("SELECT n FROM blocks WHERE session=? AND kind='raw' AND stream='client/eda' AND seq=60",
                     (session,)).fetchone()
    con.execute("UPDATE blocks SET data=?, flags=? WHERE session=? AND kind='raw' AND stream='client/eda' AND seq=60",
                (np.full(n, 0.01, dtype="<f4").tobytes(), int(BlockFlags.CONTACT_LOST), session))
    # and the client's PPG finger moved for 8 s: the pulse buried in large random swings (motion artefact)
    rng = np.random.default_rng(7)
    ppg = con.execute("SELECT seq, n, data FROM blocks WHERE session=? AND kind='raw' AND stream='client/ppg' "
                      "AND seq BETWEEN 100 AND 107", (session,)).fetchall()
    assert len(ppg) == 8
    for seq, m, data in ppg:
        x = np.frombuffer(data, dtype="<f4").astype(np.float64)
        x = x + rng.standard_normal(m).cumsum() * 4 * x.std()
        con.execute("UPDATE blocks SET data=? WHERE session=? AND kind='raw' AND stream='client/ppg' AND seq=?",
                    (x.astype("<f4").tobytes(), session, seq))
    con.commit()
    con.close()
    out, an = write_report(session, db=db, out=tmp_path / "r.html", n_surrogates=0)
    assert an.data.raw("client/eda").flags.astype(bool).sum() == n
    # beats in the motion artefact are flagged by the beat-quality index, the clean therapist's hardly any
    print("beats_low_quality:", {r: a["beats_low_quality"] for r, a in an.artefacts.items()})
    assert an.artefacts["client"]["beats_low_quality"] >= an.artefacts["therapist"]["beats_low_quality"] + 3
    assert "beats low quality" in out.read_text()
    q = {(x["kind"], x["stream"]): x for x in an.data.quality["streams"]}
    assert q[("raw", "client/eda")]["contact_lost_samples"] == n
    assert q[("raw", "therapist/eda")]["contact_lost_samples"] == 0
    assert an.artefacts["client"]["eda_invalid_raw"] >= n and an.artefacts["client"]["eda_invalid_bins"] >= 4
    assert an.artefacts["therapist"]["eda_invalid_raw"] == 0
    assert an.artefacts["client"]["beats"] > 100
    assert "id='artefacts'" in out.read_text()
    eda = an.data.feature("therapist/eda")
    assert eda.missing_blocks == 1 and eda.lost.sum() == 4 and np.all(np.isnan(eda.values[eda.lost]))
    lc = an.channels["eda"].live
    # windows reaching the lost second (with their lags) are skipped; the rest still agree
    assert 0 < lc.n_compared < lc.n_live and lc.max_abs_diff <= 1e-6
    assert "cannot be reproduced" in lc.note
    assert an.channels["hr"].live.n_compared == an.channels["hr"].live.n_live
    page = out.read_text()
    assert "rupture" in page and "100.0" in page
    assert an.data.quality["missing_blocks"] == 1


def test_report_from_a_pulled_folder_equals_the_database(demo_db, tmp_path):
    """Pull the session through the real HTTP pull API, then report from the folder: same series, same numbers."""
    from broker.api import ApiServer
    from lab.puller import LabPuller

    db, session = demo_db
    with ApiServer(db, "tok-analysis") as srv, LabPuller(srv.url, "tok-analysis", tmp_path / "lab",
                                                                  progress=False) as puller:
        rep = puller.pull()
    assert rep.sessions_pulled == 1 and not rep.failed
    a = load_from_db(db, session)
    b = load_from_folder(tmp_path / "lab", session)
    assert set(a.streams) == set(b.streams)
    for key, s in a.streams.items():
        o = b.streams[key]
        assert o.t0_ns == s.t0_ns and o.rate_hz == s.rate_hz
        assert np.array_equal(np.isnan(o.values), np.isnan(s.values))
        assert np.array_equal(o.values[~np.isnan(o.values)], s.values[~np.isnan(s.values)])
    _, an_db = write_report(session, db=db, out=tmp_path / "a.html", n_surrogates=5)
    _, an_dir = write_report(session, folder=tmp_path / "lab", out=tmp_path / "b.html", n_surrogates=5)
    ra, rb = an_db.index_rows(), an_dir.index_rows()
    assert len(ra) == len(rb) > 20
    for x, y in zip(ra, rb, strict=True):
        assert x["index"] == y["index"]
        assert (math.isnan(x["value"]) and math.isnan(y["value"])) or x["value"] == y["value"], (x, y)
    assert an_dir.channels["eda"].live.max_abs_diff <= 1e-6


def test_recompute_from_raw_with_other_parameters(demo_db, tmp_path):
    db, session = demo_db
    _, an = write_report(session, db=db, out=tmp_path / "r.html", recompute=True, n_surrogates=0,
                         params=SyncParams(win_s=20.0, inc_s=2.0, lag_s=5.0))
    ch = an.channels["eda"]
    assert ch.res.params.win_s == 20.0 and ch.res.r.shape[1] == 41
    assert not ch.live.comparable and "parameters" in ch.live.note
    assert np.isfinite(ch.res.inphase_z).mean() > 0.5


def _cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyadsync", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_report_and_its_errors(demo_db, demo_copy, tmp_path):
    db, session = demo_db
    ok = _cli("report", session, "--db", str(db), "--out", str(tmp_path / "x.html"), "--surrogates", "10", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert "max |difference|" in ok.stdout and (tmp_path / "x.html").stat().st_size > 50_000
    missing = _cli("report", "no-such-session", "--db", str(db), "--quiet")
    assert missing.returncode == 2 and "no-such-session" in missing.stderr and session in missing.stderr
    both = _cli("report", session, "--quiet")
    assert both.returncode == 2 and "--db" in both.stderr
    bad = _cli("report", session, "--db", str(db), "--win-s", "0.3", "--quiet")
    assert bad.returncode == 2 and "win_s" in bad.stderr
    notdb = tmp_path / "junk.sqlite"
    notdb.write_bytes(b"not a database at all" * 100)
    junk = _cli("report", session, "--db", str(notdb), "--quiet")
    assert junk.returncode == 2 and "not a dyadsync hub database" in junk.stderr
    # in-process: the exception types
    with pytest.raises(SessionNotFound):
        load_from_db(db, "nope")
    with pytest.raises(SourceError):
        load_from_db(tmp_path / "absent.sqlite", session)
    # an incomplete session: the client's features never reached the hub
    copy, _ = demo_copy
    con = sqlite3.connect(copy)
    con.execute("DELETE FROM blocks WHERE session=? AND kind='feat' AND stream LIKE 'client/%'", (session,))
    con.commit()
    con.close()
    with pytest.raises(IncompleteSession, match="client"):
        write_report(session, db=copy, out=tmp_path / "y.html", n_surrogates=0)
    inc = _cli("report", session, "--db", str(copy), "--quiet", "--surrogates", "0")
    assert inc.returncode == 2 and "no eda feature stream for client" in inc.stderr


def test_raw_ppg_is_analysed_once_per_person_with_the_same_numbers(demo_db, monkeypatch):
    """The HRV epochs and the artefact count share each person's beats (one ppg_features call per person, not
    two), and their numbers equal those of the functions called on their own."""
    from dsp_ext import ppg
    from lab.analysis import compute
    from lab.analysis.source import load_session

    db, session = demo_db
    data = load_session(session, db=db, with_raw=True)
    alone_arte = compute.artefacts(data)
    alone_hrv = {role: compute._hrv_from_raw(data, role) for role in ("therapist", "client")}
    calls = []
    real = ppg.ppg_features
    monkeypatch.setattr(ppg, "ppg_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    an = compute.analyse_session(data, n_surrogates=0)
    assert len(calls) == 2
    assert an.artefacts == alone_arte and alone_arte["client"]["beats"] > 100
    for role, h in alone_hrv.items():
        assert np.array_equal(an.hrv[role].rsa_ln_ms2, h.rsa_ln_ms2, equal_nan=True)
        assert np.array_equal(an.hrv[role].rmssd_ms, h.rmssd_ms, equal_nan=True)
        assert np.array_equal(an.hrv[role].epoch_t_ns, h.epoch_t_ns)
