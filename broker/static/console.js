// dyadsync room console: live state, traces, synchrony and session controls (the project's own code).
// State comes from GET /api/state, then every change is pushed by the hub over Server-Sent Events.
"use strict";

const $ = (id) => document.getElementById(id);
const T_COLOR = "#c0392b", C_COLOR = "#2471a3";
const FLAG = {SATURATED: 1, CONTACT_LOST: 2, INVALID: 64};
const st = {room: "", units: [], statuses: {}, quality: {}, beats: {}, offsetMs: 0, session: null, source: null,
            seenMetrics: 0, lastFeatMs: 0, markerButtons: []};

const plots = {
  eda: new TimePlot($("trace-eda"), {unit: "µS"}),
  hr: new TimePlot($("trace-hr"), {unit: "bpm"}),
  sync: new TimePlot($("sync-plot"), {zero: true}),
};
for (const sig of ["eda", "hr"]) {
  plots[sig].setSeries("therapist", T_COLOR);
  plots[sig].setSeries("client", C_COLOR);
}
plots.sync.setSeries("therapist_led", T_COLOR);
plots.sync.setSeries("client_led", C_COLOR);
const syncSeries = {eda: {therapist_led: [], client_led: []}, hr: {therapist_led: [], client_led: []}};

function nowMs() { return Date.now() + st.offsetMs; }
function nsToMs(ns) { return ns / 1e6; }
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function hms(ms) {
  if (!(ms >= 0)) return "--:--:--";
  const s = Math.floor(ms / 1000);
  return [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60].map((x) => String(x).padStart(2, "0")).join(":");
}
function clock(ns) { return new Date(nsToMs(ns)).toLocaleTimeString(); }
function num(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }

// ------------------------------------------------------------------------------------------- state
async function loadState() {
  const r = await fetch("/api/state", {credentials: "same-origin"});
  if (r.status === 401) { window.location.href = "/login"; return; }
  const s = await r.json();
  st.room = s.room; st.units = s.units; st.offsetMs = nsToMs(s.server_time_ns) - Date.now();
  st.statuses = s.statuses; st.quality = s.quality; st.markerButtons = s.marker_buttons;
  $("room").textContent = s.room;
  if (!$("session-input").value) $("session-input").value = s.suggested_session;
  for (const p of Object.values(plots)) for (const ser of p.series.values()) ser.points = [];
  syncSeries.eda = {therapist_led: [], client_led: []}; syncSeries.hr = {therapist_led: [], client_led: []};
  for (const [key, pts] of Object.entries(s.traces)) {
    const [, stream] = key.split(":"); const [role, sig] = stream.split("/");
    if (plots[sig]) plots[sig].add(role, pts.map(([t, v]) => [nsToMs(t), v]));
  }
  for (const evs of Object.values(s.metrics)) for (const ev of evs) onMetric(ev, false);
  setLink(s.link);
  setSession(s.session);
  renderMarkerButtons();
  renderUnits(); renderQuality(); redraw();
}

function setLink(link) {
  const el = $("link");
  el.textContent = link.connected ? "broker connected" : ("broker: " + (link.error || "not connected"));
  el.className = "link " + (link.connected ? "ok" : "bad");
}

function setSession(sess) {
  st.session = sess && sess.id ? sess : null;
  const running = !!st.session;
  $("session-state").textContent = running ? "recording" : "no session";
  $("session-state").className = "pill " + (running ? "recording" : "idle");
  $("session-id").textContent = running ? st.session.id : "";
  $("session-codes").textContent = running && st.session.therapist ?
    "therapist " + st.session.therapist + " · client " + st.session.client : "";
  $("stop-btn").disabled = !running;
  $("start-btn").disabled = running;
  const list = $("marker-list"); list.innerHTML = "";
  const marks = running ? st.session.markers : [];
  for (const m of marks) {
    const li = document.createElement("li");
    li.textContent = clock(m.time_ns) + "  " + m.label;
    list.appendChild(li);
  }
  for (const p of [plots.eda, plots.hr, plots.sync]) p.markers = marks.map((m) => ({t_ms: nsToMs(m.time_ns), label: m.label}));
  tick();
}

function runningSessionFromStatuses() {
  const live = Object.values(st.statuses).filter((s) => s.session && s.state !== "offline").map((s) => s.session);
  return live.length ? live[0] : null;
}

// ------------------------------------------------------------------------------------ rendering
const STATE_TEXT = {booting: "starting", idle: "ready", recording: "recording", buffering: "buffering (broker unreachable or backlog)",
                    sensor_fault: "sensor fault", fatal: "fatal error", offline: "offline"};

function renderUnits() {
  const box = $("units"); box.innerHTML = "";
  const names = Array.from(new Set([...st.units, ...Object.keys(st.statuses)]));
  for (const u of names) {
    const s = st.statuses[u];
    const div = document.createElement("div");
    div.className = "unit"; div.dataset.unit = u;
    if (!s) {
      div.innerHTML = `<h3><span class="led offline"></span>${esc(u)}</h3><p class="s-bad state" data-state="unknown">no status yet (not connected?)</p>`;
      box.appendChild(div); continue;
    }
    const ageS = (nowMs() - nsToMs(s.received_ns)) / 1000;
    const sensors = Object.entries(s.sensors || {}).map(([n, v]) =>
      `<span class="${v === "ok" ? "s-ok" : "s-bad"}">${esc(n)}: ${esc(v)}</span>`).join(", ") || "–";
    // bad_commands counts refused commands, not lost data: shown apart
    const drops = Object.entries(s.dropped || {}).filter(([k, v]) => v && k !== "bad_commands")
      .map(([k, v]) => `${esc(k)} ${v}`).join(", ") || "none";
    const badCmds = (s.dropped || {}).bad_commands || 0;
    const sync = s.clock_synced === true ? '<span class="s-ok">synchronised</span>' :
      (s.clock_synced === false ? '<span class="s-bad">NOT synchronised</span>' : '<span class="s-warn">unknown</span>');
    div.innerHTML = `<h3><span class="led ${esc(s.state)}"></span>${esc(u)}</h3>
      <p class="state ${s.state === "idle" || s.state === "recording" ? "s-ok" : "s-bad"}" data-state="${esc(s.state)}">${esc(STATE_TEXT[s.state] || s.state)}</p>
      <dl><dt>session</dt><dd>${esc(s.session || "–")}</dd>
      <dt>sensors</dt><dd>${sensors}</dd>
      <dt>outbox</dt><dd>${s.buffer_depth} queued</dd>
      <dt>clock</dt><dd>${sync}</dd>
      <dt>losses</dt><dd>${drops}</dd>
      <dt>refused commands</dt><dd class="bad-commands">${badCmds}</dd>
      <dt>last status</dt><dd>${ageS < 90 ? Math.round(ageS) + " s ago" : clock(s.received_ns)}</dd></dl>`;
    box.appendChild(div);
  }
}

function qualityText(q) {
  if (!q) return ['<span class="s-warn">no data</span>', "nodata"];
  const age = (nowMs() - nsToMs(q.received_ns)) / 1000;
  if (age > 15) return [`<span class="s-warn">no data for ${Math.round(age)} s</span>`, "stale"];
  if (q.flags & FLAG.CONTACT_LOST) return ['<span class="s-bad">contact lost</span>', "contact_lost"];
  if (q.valid === 0) return ['<span class="s-bad">no valid signal</span>', "invalid"];
  if (q.flags & FLAG.SATURATED) return ['<span class="s-warn">saturated</span>', "saturated"];
  if (q.valid < q.n) return [`<span class="s-warn">${q.n - q.valid} of ${q.n} invalid</span>`, "partial"];
  return ['<span class="s-ok">good</span>', "ok"];
}

function renderQuality() {
  const box = $("quality"); box.innerHTML = "";
  for (const role of ["therapist", "client"]) {
    const div = document.createElement("div");
    div.className = "qcard"; div.dataset.role = role;
    let html = `<h3 class="${role === "therapist" ? "t" : "c"}">${role}</h3>`;
    for (const [sig, label] of [["eda", "EDA"], ["hr", "heart rate (PPG)"]]) {
      const key = Object.keys(st.quality).find((k) => k.endsWith(":" + role + "/" + sig));
      const [txt, code] = qualityText(key ? st.quality[key] : null);
      html += `<div data-signal="${sig}" data-quality="${code}">${label}: ${txt}</div>`;
    }
    const [btxt, bcode] = beatText(st.beats[role]);
    html += `<div data-beats="${bcode}">beats: ${btxt}</div>`;
    div.innerHTML = html; box.appendChild(div);
  }
}

let drawPending = false;
function redraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    const now = nowMs();
    for (const p of Object.values(plots)) { p.prune(now); p.draw(now); }
    $("trace-eda").dataset.points = plots.eda.count();
    $("trace-hr").dataset.points = plots.hr.count();
    $("sync-plot").dataset.windows = plots.sync.count();
  });
}

function tick() {
  const s = st.session;
  $("elapsed").textContent = s && s.started_ns ? hms(nowMs() - nsToMs(s.started_ns)) : "--:--:--";
}

// ------------------------------------------------------------------------------------ live events
// Beat quality per person from the unit's regulation epochs: beats in the latest epoch and how many of them
// were left out (flagged by the beat-quality index or the interval correction; docs/dsp.md).
function beatText(b) {
  if (!b || b.n === null || b.n === undefined) return ['<span class="s-warn">no epoch yet</span>', "none"];
  if (b.n === 0) return ['<span class="s-bad">no beats</span>', "nobeats"];
  const share = b.bad / b.n, txt = `${b.bad} of ${b.n} flagged (last ${Math.round(b.epochS)} s)`;
  if (share > 0.2) return [`<span class="s-bad">${txt}</span>`, "poor"];
  if (share > 0.05) return [`<span class="s-warn">${txt}</span>`, "fair"];
  return [`<span class="s-ok">${txt}</span>`, "good"];
}

function onRegulation(ev, live) {
  for (const role of ["therapist", "client"]) {
    const n = ev.values[role + "_n_beats"];
    if (n === undefined) continue;
    st.beats[role] = {n: n, bad: ev.values[role + "_n_invalid_beats"] ?? 0,
                      epochS: (ev.window_end_ns - ev.window_start_ns) / 1e9};
  }
  if (live) renderQuality();
}

// who leads: the unit's pooled values (dsp_ext.synchrony.LeaderPool, the one rule of docs/dsp.md "Who leads");
// a unit from before them sends only the window's own maximum (leader, max_r, max_lag_s)
function leaderText(v) {
  const pooled = v.pooled_leader !== undefined;
  const lead = pooled ? v.pooled_leader : v.leader;
  const r = pooled ? v.pooled_r : v.max_r, lag = pooled ? v.pooled_lag_s : v.max_lag_s;
  if (lead === null || lead === undefined || lead === 0) return "none";
  return (lead > 0 ? "therapist" : "client") + " " + num(r, 2) + " (" + num(lag, 2) + ")";
}

function onMetric(ev, live) {
  if (ev.name === "regulation") { onRegulation(ev, live); return; }
  if (!ev.name.startsWith("sync_")) return;
  const ch = ev.name.slice(5), v = ev.values, t = nsToMs(ev.window_end_ns);
  if (!syncSeries[ch]) return;
  for (const [k, val] of [["therapist_led", v.therapist_led], ["client_led", v.client_led]]) {
    const arr = syncSeries[ch][k];
    arr.push([t, val]);
    if (arr.length > 4000) arr.splice(0, arr.length - 3000);  // keep the plotted span, not the whole session
  }
  if (ch === $("sync-channel").value) {
    plots.sync.add("therapist_led", [[t, v.therapist_led]]);
    plots.sync.add("client_led", [[t, v.client_led]]);
  }
  const row = $("sync-" + ch);
  if (row) {
    row.querySelector(".tl").textContent = num(v.therapist_led, 2);
    row.querySelector(".cl").textContent = num(v.client_led, 2);
    row.querySelector(".ip").textContent = v.inphase_r === null ? "none" : num(v.inphase_r, 2) + " (" + num(v.inphase_lag_s, 2) + ")";
    row.querySelector(".ap").textContent = v.antiphase_r === null ? "none" : num(v.antiphase_r, 2) + " (" + num(v.antiphase_lag_s, 2) + ")";
    row.querySelector(".r0").textContent = num(v.r0, 2);
    row.querySelector(".ld").textContent = leaderText(v);
    row.dataset.windows = (Number(row.dataset.windows || 0) + 1);
  }
  if (live) redraw();
}

function onFeat(ev) {
  const [role, sig] = ev.stream.split("/");
  const step = 1000 / ev.rate_hz, t0 = nsToMs(ev.t0_ns);
  if (plots[sig]) plots[sig].add(role, ev.values.map((v, i) => [t0 + i * step, v]));
  st.quality[ev.unit + ":" + ev.stream] = {flags: ev.flags, received_ns: ev.received_ns, n: ev.values.length,
                                           valid: ev.values.filter((v) => v !== null).length};
  window.__lastFeat = {stream: ev.stream, t0_ns: ev.t0_ns, received_ms: Date.now()};
  redraw();
}

function connectEvents() {
  if (st.source) st.source.close();
  const src = new EventSource("/api/events");
  st.source = src;
  src.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    const before = st.statuses[s.unit] && st.statuses[s.unit].session;
    st.statuses[s.unit] = s;
    renderUnits();
    if (before !== s.session) refreshSession();
  });
  src.addEventListener("feat", (e) => onFeat(JSON.parse(e.data)));
  src.addEventListener("metric", (e) => {
    const ev = JSON.parse(e.data);
    window.__lastMetric = {name: ev.name, seq: ev.seq, received_ms: Date.now()};
    onMetric(ev, true);
  });
  src.addEventListener("link", (e) => setLink(JSON.parse(e.data)));
  src.addEventListener("command", (e) => { const c = JSON.parse(e.data); if (c.cmd !== "start") refreshSession(); });
  src.onerror = () => { setLink({connected: false, error: "the hub does not answer; retrying"}); };
  src.onopen = () => { loadState().catch(() => {}); };
}

async function refreshSession() {
  const r = await fetch("/api/state", {credentials: "same-origin"});
  if (r.ok) { const s = await r.json(); st.statuses = s.statuses; setSession(s.session); renderUnits(); }
}

// ----------------------------------------------------------------------------------- commands
async function post(path, body) {
  const r = await fetch(path, {method: "POST", credentials: "same-origin",
                               headers: {"Content-Type": "application/json", "X-Dyadsync": "1"}, body: JSON.stringify(body)});
  if (r.status === 401) { window.location.href = "/login"; throw new Error("logged out"); }
  const data = await r.json().catch(() => ({detail: "no answer"}));
  return {ok: r.ok, data};
}

function showResult(what, res) {
  const el = $("cmd-result");
  const d = res.data;
  if (d.cmd) {
    const lines = [`${what}: ${d.ok ? "accepted by every unit" : "NOT accepted by every unit"}`];
    for (const u of d.accepted) lines.push(`  ${u}: accepted`);
    for (const [u, why] of Object.entries(d.refused)) lines.push(`  ${u}: REFUSED: ${why}`);
    for (const u of d.missing) lines.push(`  ${u}: NO ANSWER (offline or not connected?)`);
    el.textContent = lines.join("\n");
  } else {
    el.textContent = `${what}: ${d.detail || "failed"}`;
  }
  el.className = res.ok ? "ok" : "bad";
}

$("start-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("start-btn").disabled = true;
  $("cmd-result").textContent = "starting… (waiting for every unit)"; $("cmd-result").className = "";
  try {
    const res = await post("/api/start", {therapist: $("therapist").value.trim(), client: $("client").value.trim(),
                                          session: $("session-input").value.trim()});
    showResult("start " + ($("session-input").value.trim()), res);
    if (res.ok) $("session-input").value = "";
  } finally {
    await refreshSession();
  }
});

$("stop-btn").addEventListener("click", () => {
  if (!st.session) return;
  $("confirm-stop-id").textContent = st.session.id;
  $("confirm-stop").showModal();
});
$("confirm-stop-no").addEventListener("click", () => $("confirm-stop").close());
$("confirm-stop-yes").addEventListener("click", async () => {
  $("confirm-stop").close();
  const id = st.session && st.session.id;
  const res = await post("/api/stop", {session: id});
  showResult("stop " + id, res);
  await refreshSession();
  if (!st.session) {
    const r = await fetch("/api/state", {credentials: "same-origin"});
    if (r.ok) $("session-input").value = (await r.json()).suggested_session;
  }
});

async function addMarker(label) {
  if (!st.session) { showResult("marker", {ok: false, data: {detail: "no session is running"}}); return; }
  const res = await post("/api/marker", {label, session: st.session.id});
  showResult(`marker "${label}"`, res);
  await refreshSession();
}

function renderMarkerButtons() {
  const box = $("marker-buttons"); box.innerHTML = "";
  st.markerButtons.forEach((label, i) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "marker-btn"; b.dataset.label = label;
    b.textContent = (i < 9 ? (i + 1) + ": " : "") + label;
    b.addEventListener("click", () => addMarker(label));
    box.appendChild(b);
  });
}

$("marker-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const label = $("marker-text").value.trim();
  if (!label) return;
  $("marker-text").value = "";
  addMarker(label);
});

document.addEventListener("keydown", (ev) => {
  const tag = (ev.target && ev.target.tagName) || "";
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (/^[1-9]$/.test(ev.key) && st.markerButtons[Number(ev.key) - 1]) { ev.preventDefault(); addMarker(st.markerButtons[Number(ev.key) - 1]); }
  else if (ev.key === "m" || ev.key === "M") { ev.preventDefault(); addMarker("mark"); }
});

$("sync-channel").addEventListener("change", () => {
  const ch = $("sync-channel").value;
  for (const name of ["therapist_led", "client_led"]) plots.sync.series.get(name).points = syncSeries[ch][name].slice();
  redraw();
});

$("logout-btn").addEventListener("click", async () => {
  await fetch("/api/logout", {method: "POST", credentials: "same-origin", headers: {"X-Dyadsync": "1"}});
  window.location.href = "/login";
});

setInterval(() => { tick(); redraw(); }, 1000);
setInterval(() => { renderUnits(); renderQuality(); }, 2000);
loadState().then(connectEvents).catch((e) => { $("cmd-result").textContent = "cannot load the console state: " + e; });
