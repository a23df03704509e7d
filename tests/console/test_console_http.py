"""The console page's own login over real HTTP: nothing without it (the lab's API token does not open it),
state-changing requests need the page's header, codes are checked before anything is sent, and a console
started before its broker waits for it and says so."""

from __future__ import annotations

import httpx

from broker.auth import RoomAuth
from broker.console_app import ConsoleServer, Login, write_login
from broker.mosquitto import MosquittoProcess, write_broker_files

from .conftest import wait


def test_console_login_and_guards(tmp_path):
    auth = RoomAuth.generate("room-a", ["unit-a"])
    files = write_broker_files(tmp_path / "broker", auth)
    write_login(tmp_path / "login.json", "operator", "correct horse battery")
    server = ConsoleServer("room-a", ["unit-a"], (files.host, files.port, *auth.service_user("console")),
                           Login.load(tmp_path / "login.json"))
    broker = MosquittoProcess(files)
    server.start()  # before its broker
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            r = http.get("/", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/login"
            assert http.get("/login").status_code == 200
            assert http.get("/api/state").status_code == 401
            assert http.get("/api/events").status_code == 401
            assert http.get("/api/state", headers={"Authorization": "Bearer " + "t" * 32}).status_code == 401
            assert http.post("/api/start", json={}, headers={"X-Dyadsync": "1"}).status_code == 401
            r = http.post("/api/login", json={"user": "operator", "password": "wrong"})
            assert r.status_code == 401 and "dyadsync_console" not in r.cookies
            r = http.post("/api/login", json={"user": "operator", "password": "correct horse battery"})
            assert r.status_code == 200 and "dyadsync_console" in http.cookies
            state = http.get("/api/state").json()
            assert state["link"]["connected"] is False and "cannot reach the room broker" in state["link"]["error"]
            assert http.post("/api/marker", json={"label": "x"}, headers={"X-Dyadsync": "1"}).status_code == 503

            broker.start()  # the console connects by itself
            assert wait(lambda: http.get("/api/state").json()["link"]["connected"], 30)
            r = http.post("/api/start", json={"therapist": "T01", "client": "C07"})  # no header: another site?
            assert r.status_code == 403
            r = http.post("/api/start", json={"therapist": "Anna Muster", "client": "C07"},
                          headers={"X-Dyadsync": "1"})
            assert r.status_code == 400 and "not a pseudonymous code" in r.json()["detail"]
            r = http.post("/api/stop", json={}, headers={"X-Dyadsync": "1"})
            assert r.status_code == 409 and "no session is running" in r.json()["detail"]
            assert http.post("/api/logout", headers={"X-Dyadsync": "1"}).status_code == 200
            assert http.get("/api/state").status_code == 401
    finally:
        server.stop()
        broker.stop()
