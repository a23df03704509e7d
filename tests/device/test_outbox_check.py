"""``dyadsync unit check``: the outbox file passes Debian's sqlite3 integrity check, and its accounting
(what waits per stream, the resend tail, quota drops, a sequence number held twice) is told in words."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest

from broker import wire
from device.outbox import Outbox, OutMsg
from dyadsync.cli import main
from firmware_bridge.block import SampleBlock

SQLITE3 = shutil.which("sqlite3", path="/usr/bin")
ROOM, UNIT, SESSION = "room-a", "unit-a", "s1"


def _raw(stream: str, seq: int) -> OutMsg:
    b = SampleBlock(stream, seq, 1_790_000_000_000_000_000 + seq * 10**9, 32.0, np.zeros(32, np.float32))
    return OutMsg(wire.raw_topic(ROOM, UNIT, stream), wire.encode_block(b, SESSION), "raw")


def _metric(seq: int) -> OutMsg:
    m = wire.Metric(SESSION, seq, "sync_eda", seq * 10**9, seq * 10**9 + 30 * 10**9, {"r0": 0.1})
    return OutMsg(wire.metric_topic(ROOM, UNIT, "sync_eda"), m.encode(), "metric")


def _state(next_seq: dict[str, int]) -> dict:
    """The open session as the unit's pipeline commits it with its messages."""
    return {"session": {"session": {"id": SESSION, "participants": {"therapist": "T01", "client": "C07"},
                                    "start_ns": 0, "k0": 0, "markers": 0}, "raw_seq": next_seq, "epoch_done": 0}}


@pytest.fixture
def outbox_file(tmp_path):
    """An outbox during a broker outage: blocks and metrics queued, a status, the quota dropping the two
    oldest raw blocks, then two blocks acknowledged by the broker (the resend tail)."""
    path = tmp_path / f"unit-{UNIT}.sqlite"
    box = Outbox(path, keep_acked_s=30.0)
    box.put([_raw(s, k) for k in range(6) for s in ("client/eda", "therapist/eda")] + [_metric(0), _metric(1)],
            state=_state({"client/eda": 6, "therapist/eda": 6}))
    st = wire.Status(unit=UNIT, state="buffering", time_ns=1)
    box.put([OutMsg(wire.status_topic(ROOM, UNIT), st.encode(), "status", retain=True)])
    box.quota_bytes = box.bytes_queued - 1  # full: one more block evicts the two oldest raw blocks
    box.put([_raw("client/eda", 6)], state=_state({"client/eda": 7, "therapist/eda": 6}))
    assert box.counters() == {"dropped_raw": 2}
    box.quota_bytes = 2**20
    box.acknowledge(box.put([_raw("client/eda", 7), _raw("therapist/eda", 6)],
                            state=_state({"client/eda": 8, "therapist/eda": 7})))
    box.close()
    return path


def test_outbox_passes_debian_sqlite3_integrity_check(outbox_file):
    if SQLITE3 is None:
        pytest.skip("/usr/bin/sqlite3 is missing (apt-get install sqlite3)")
    out = subprocess.run([SQLITE3, str(outbox_file), "PRAGMA integrity_check"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "ok"


def test_unit_check_in_words(outbox_file, capsys, tmp_path):
    cfg = tmp_path / "unit.toml"
    cfg.write_text(f'room = "{ROOM}"\nunit = "{UNIT}"\ndata_dir = "{tmp_path}"\n[broker]\nusername = "{UNIT}"\n'
                   'password = "pw"\n[outbox]\nquota_mb = 1\n')
    assert main(["unit", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Integrity: intact." in out
    assert "Open session: s1 (next raw sequence numbers: client/eda 8, therapist/eda 7)" in out
    assert "Waiting to be sent: 14 messages" in out and "of a 1 MiB quota" in out
    assert "session s1 client/eda: 6 raw blocks (seq 1-6)" in out  # 0 dropped by the quota, 7 in the tail
    assert "session s1 therapist/eda: 5 raw blocks (seq 1-5)" in out
    assert "session s1 sync_eda: 2 metric windows (seq 0-1)" in out
    assert "1 status message" in out
    assert "Kept to resend after a reconnect (already acknowledged by the broker): 2 messages." in out
    assert "Dropped under the disk quota since this file was created: 2 raw blocks" in out
    assert "Result: intact; 14 messages waiting for the broker." in out
    assert main(["unit", "check", "--db", str(outbox_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queued"] == 14 and report["dropped"] == {"raw": 2} and not report["damaged"]


def test_sequence_number_held_twice_or_ahead_of_the_counter_is_damage(outbox_file, capsys):
    box = Outbox(outbox_file)
    box.put([_raw("therapist/eda", 5)])  # seq 5 again: the unit would have used a number twice
    box.put([_raw("client/eda", 9)])  # beyond the session's counter (8): the next block would reuse 9
    box.close()
    assert main(["unit", "check", "--db", str(outbox_file)]) == 1
    out = capsys.readouterr().out
    assert "therapist/eda: 6 raw blocks (seq 1-5); 1 sequence numbers held twice" in out
    assert "Result: DAMAGED - " in out and "raw therapist/eda of session s1 holds 1 sequence numbers twice" in out
    assert "raw client/eda: seq 9 is queued but the session's counter is at 8" in out


def test_undecodable_rows_and_not_an_outbox(outbox_file, tmp_path, capsys):
    con = sqlite3.connect(outbox_file)
    con.execute("UPDATE outbox SET payload=x'00ff' WHERE id=(SELECT MAX(id) FROM outbox WHERE kind='raw')")
    con.commit()
    con.close()
    assert main(["unit", "check", "--db", str(outbox_file)]) == 1
    assert "1 stored messages or state values cannot be decoded" in capsys.readouterr().out
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x(a)").connection.close()
    assert main(["unit", "check", "--db", str(other)]) == 2
    assert "not a dyadsync unit outbox" in capsys.readouterr().err
    assert main(["unit", "check", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no such file" in capsys.readouterr().err
