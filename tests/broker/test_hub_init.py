"""`dyadsync hub init` output run by a real Mosquitto: auth, ACL with MQTT 5 reason codes, TLS, files."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import ssl
import stat
import tempfile
import threading
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker import wire
from broker.hub_config import load_hub_config, parse_hub_config
from broker.hub_init import init_hub
from broker.mosquitto import MosquittoProcess, free_port
from broker.mqtt import client_id, make_client
from core.errors import ConfigError
from dyadsync.cli import main as cli_main

from ..conftest import ROOM


def _connect(host, port, user, pw, *, protocol=mqtt.MQTTv311, tls_ca=None, tls_default=False):
    """Connect and wait for CONNACK; returns (client, reason_code or the exception raised)."""
    done = threading.Event()
    out: dict = {}
    def on_connect(client, userdata, flags, rc, props):
        out["rc"] = rc
        done.set()

    def on_publish(client, userdata, mid, rc, props):
        out.setdefault("pub", {})[mid] = rc

    c = make_client(client_id("t"), username=user, password=pw, protocol=protocol,
                    tls_ca=str(tls_ca) if tls_ca else None, on_connect=on_connect, on_publish=on_publish)
    if tls_default:
        c.tls_set()  # the system trust store only: does not know the room CA
    c.out = out
    try:
        c.connect(host, port)
    except (OSError, ssl.SSLError) as exc:
        return c, exc
    c.loop_start()
    if not done.wait(10):
        c.loop_stop()
        return c, TimeoutError("no CONNACK")
    return c, out["rc"]


def _close(*clients):
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"listener\.port"):
        parse_hub_config({"room": "r1", "units": ["u1"], "listener": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"room"):
        parse_hub_config({"room": "Bad Room", "units": ["u1"]})
    with pytest.raises(ConfigError, match=r"partners"):
        parse_hub_config({"room": "r1", "units": ["u1"], "partners": {"u1": "u9"}})
    with pytest.raises(ConfigError, match=r"tls\.colour"):
        parse_hub_config({"room": "r1", "units": ["u1"], "tls": {"colour": "red"}})
    bad = tmp_path / "hub.toml"
    bad.write_text("room = 'r1'\nunits = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_hub_config(bad)


def test_cli_init_writes_everything_and_keeps_secrets(tmp_path):
    cfg_file = tmp_path / "hub.toml"
    cfg_file.write_text(
        'room = "room-z"\nunits = ["u1", "u2"]\nout_dir = "gen"\nmosquitto_user = "root"\n'
        '[partners]\nu1 = "u2"\n[listener]\nhost = "0.0.0.0"\nport = 1883\nadvertise_host = "hub.lan"\n'
        '[tls]\nhostnames = ["hub.lan"]\n[bridge]\naddress = "lab.example.org"\n'
    )
    assert cli_main(["hub", "init", "--config", str(cfg_file)]) == 0
    gen = tmp_path / "gen"
    conf = (gen / "mosquitto" / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", "persistence true", "autosave_interval 5", "listener 1883 0.0.0.0",
                 "listener 8883 0.0.0.0", "cleansession false", "local_cleansession false",
                 "topic dyadsync/v1/room-z/# out 1", "bridge_protocol_version mqttv311"):
        assert line in conf, line
    acl = (gen / "mosquitto" / "acl").read_text()
    assert "user u1\ntopic write dyadsync/v1/room-z/u1/#\ntopic read dyadsync/v1/room-z/cmd\n" \
           "topic read dyadsync/v1/room-z/u2/feat/#" in acl
    creds = tomllib.loads((gen / "units" / "u1" / "credentials.toml").read_text())
    assert creds["broker"]["username"] == "u1" and creds["broker"]["url"] == "mqtts://hub.lan:8883"
    assert stat.S_IMODE(os.stat(gen / "units" / "u1" / "credentials.toml").st_mode) == 0o600
    assert (gen / "units" / "u1" / "client.crt").exists() and (gen / "units" / "u1" / "ca.crt").exists()
    assert "server hub.lan iburst" in (gen / "units" / "u1" / "chrony.conf").read_text()
    chrony = (gen / "chrony" / "dyadsync-hub.conf").read_text()
    assert "allow 192.168.0.0/16" in chrony and "local stratum 8" in chrony
    token = (gen / "api" / "token").read_text()
    # Re-running keeps passwords, certificates and token; a removed unit disappears.
    cfg_file.write_text(cfg_file.read_text().replace('units = ["u1", "u2"]', 'units = ["u1", "u3"]')
                        .replace('u1 = "u2"', 'u1 = "u3"'))
    assert cli_main(["hub", "init", "--config", str(cfg_file)]) == 0
    creds2 = tomllib.loads((gen / "units" / "u1" / "credentials.toml").read_text())
    assert creds2["broker"]["password"] == creds["broker"]["password"]
    assert (gen / "api" / "token").read_text() == token
    assert not (gen / "units" / "u2").exists() and (gen / "units" / "u3" / "credentials.toml").exists()
    assert "user u2" not in (gen / "mosquitto" / "acl").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_mosquitto_drops_to_its_user_and_still_reads_everything():
    """Started as root, Mosquitto drops to `mosquitto` before opening passwd, ACL, persistence, log, TLS key."""
    try:
        mosq = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    base = Path(tempfile.mkdtemp(prefix="dyadsync-hub-", dir="/tmp"))  # pytest's tmp dirs are 0700 root
    try:
        os.chmod(base, 0o711)
        tls_port = free_port()
        cfg = parse_hub_config({"room": ROOM, "units": ["unit-a"], "out_dir": str(base / "h"),
                                "listener": {"port": free_port()},
                                "tls": {"host": "127.0.0.1", "port": tls_port}})
        layout = init_hub(cfg)
        for p in (layout.broker.persistence_dir, layout.broker.password_file, layout.broker.acl_file,
                  layout.broker.log_file, base / "h" / "tls" / "server.key"):
            assert os.stat(p).st_uid == mosq.pw_uid, p
        assert "user mosquitto" in layout.broker.conf.read_text()
        assert os.stat(base / "h" / "tls" / "ca.key").st_uid == 0  # the CA key is not the broker's business
        with MosquittoProcess(layout.broker) as proc:
            c, rc = _connect(proc.host, proc.port, "unit-a", layout.auth.units["unit-a"])
            assert not isinstance(rc, Exception) and not rc.is_failure, (rc, proc.log_tail())
            c2, rc2 = _connect("127.0.0.1", tls_port, "unit-a", layout.auth.units["unit-a"],
                               tls_ca=base / "h" / "tls" / "ca.crt")
            assert not isinstance(rc2, Exception) and not rc2.is_failure, (rc2, proc.log_tail())
            _close(c, c2)
            assert os.stat(f"/proc/{proc.pid}").st_uid == mosq.pw_uid  # it really dropped
        assert (layout.broker.persistence_dir / "mosquitto.db").stat().st_uid == mosq.pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_anonymous_and_wrong_password_refused(hub_factory):
    cfg, layout, proc = hub_factory()
    c1, rc = _connect(proc.host, proc.port, None, None)
    assert not isinstance(rc, Exception) and rc.is_failure, rc
    c2, rc = _connect(proc.host, proc.port, "unit-a", "wrong-password")
    assert not isinstance(rc, Exception) and rc.is_failure, rc
    c3, rc = _connect(proc.host, proc.port, "unit-a", layout.auth.units["unit-a"])
    assert not rc.is_failure, rc
    _close(c1, c2, c3)


def test_unit_cannot_publish_as_another_nor_read_its_raw(hub_factory):
    cfg, layout, proc = hub_factory()
    h, p = proc.host, proc.port
    a, rc = _connect(h, p, "unit-a", layout.auth.units["unit-a"], protocol=mqtt.MQTTv5)
    assert not rc.is_failure
    b, rc = _connect(h, p, "unit-b", layout.auth.units["unit-b"], protocol=mqtt.MQTTv5)
    assert not rc.is_failure
    got_a: list = []
    a.on_message = lambda c, u, m: got_a.append(m.topic)
    subscribed = threading.Event()
    a.on_subscribe = lambda c, u, mid, rcs, props: subscribed.set()
    # A may read B's features (partner) but not B's raw data.
    a.subscribe([(wire.raw_topic(ROOM, "unit-b", "client/eda"), 1), (wire.feat_topic(ROOM, "unit-b", "client/eda"), 1)])
    assert subscribed.wait(5)
    forged = a.publish(wire.raw_topic(ROOM, "unit-b", "client/eda"), b"forged", qos=1)
    forged.wait_for_publish(5)
    own = a.publish(wire.raw_topic(ROOM, "unit-a", "client/eda"), b"mine", qos=1)
    own.wait_for_publish(5)
    assert a.out["pub"][forged.mid] == "Not authorized" and a.out["pub"][forged.mid].value == 0x87
    assert not a.out["pub"][own.mid].is_failure
    b.publish(wire.raw_topic(ROOM, "unit-b", "client/eda"), b"b-raw", qos=1).wait_for_publish(5)
    b.publish(wire.feat_topic(ROOM, "unit-b", "client/eda"), b"b-feat", qos=1).wait_for_publish(5)
    b.publish(wire.status_topic(ROOM, "unit-a"), b"forged status", qos=1).wait_for_publish(5)
    deadline = threading.Event()
    for _ in range(50):
        if got_a:
            break
        deadline.wait(0.1)
    deadline.wait(0.3)
    assert got_a == [wire.feat_topic(ROOM, "unit-b", "client/eda")]
    _close(a, b)


def test_tls_listener_accepts_room_ca_and_rejects_others(hub_factory):
    tls_port = free_port()
    cfg, layout, proc = hub_factory(tls={"host": "127.0.0.1", "port": tls_port, "hostnames": ["localhost"],
                                         "ip_addresses": ["127.0.0.1"]})
    creds = tomllib.loads(layout.unit_files["unit-a"].read_text())["broker"]
    ca = layout.unit_files["unit-a"].parent / creds["ca_file"]
    ok, rc = _connect("127.0.0.1", tls_port, "unit-a", creds["password"], tls_ca=ca)
    assert not isinstance(rc, Exception) and not rc.is_failure, rc
    _close(ok)
    # Without the room CA the hub's certificate cannot be verified: the handshake fails.
    _, err = _connect("127.0.0.1", tls_port, "unit-a", creds["password"], tls_default=True)
    assert isinstance(err, ssl.SSLCertVerificationError | ssl.SSLError), err
    # A plain-text client on the TLS port gets no CONNACK.
    plain, err = _connect("127.0.0.1", tls_port, "unit-a", creds["password"])
    assert isinstance(err, Exception) or err.is_failure, err
    plain.loop_stop()
    json.dumps(str(err))
