// dyadsync room console: a small time-series plotter on <canvas> (the project's own code).
// TimePlot draws several series of [t_ms, value] points over the last `spanS` seconds, with an
// autoscaled y axis, grid lines, vertical marker lines and a gap wherever a value is null.
"use strict";

class TimePlot {
  constructor(canvas, opts) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.spanS = (opts && opts.spanS) || 300;
    this.unit = (opts && opts.unit) || "";
    this.fixed = (opts && opts.fixed) || null;  // [ymin, ymax] or null for autoscale
    this.series = new Map();  // name -> {color, points: [[t_ms, v], ...]}
    this.markers = [];  // [{t_ms, label}]
    this.zero = !!(opts && opts.zero);
  }

  setSeries(name, color) {
    if (!this.series.has(name)) this.series.set(name, {color, points: []});
    return this.series.get(name);
  }

  add(name, points) {
    const s = this.series.get(name);
    if (!s) return;
    for (const p of points) {
      const n = s.points.length;
      if (n && p[0] <= s.points[n - 1][0]) {  // late data: insert in time order
        let i = n - 1;
        while (i >= 0 && s.points[i][0] > p[0]) i--;
        if (i >= 0 && s.points[i][0] === p[0]) s.points[i] = p; else s.points.splice(i + 1, 0, p);
      } else {
        s.points.push(p);
      }
    }
  }

  prune(nowMs) {
    const from = nowMs - this.spanS * 1000 - 5000;
    for (const s of this.series.values()) {
      let k = 0;
      while (k < s.points.length && s.points[k][0] < from) k++;
      if (k) s.points.splice(0, k);
    }
  }

  count() {
    let n = 0;
    for (const s of this.series.values()) n += s.points.length;
    return n;
  }

  draw(nowMs) {
    const c = this.canvas, g = this.ctx;
    const W = c.width, H = c.height, L = 52, R = 8, T = 8, B = 20;
    const t1 = nowMs, t0 = nowMs - this.spanS * 1000;
    g.clearRect(0, 0, W, H);
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series.values()) {
      for (const [t, v] of s.points) {
        if (v === null || t < t0) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (this.fixed) { lo = this.fixed[0]; hi = this.fixed[1]; }
    if (this.zero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
    const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R);
    const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
    // grid and labels
    g.strokeStyle = "#e5e5e5"; g.fillStyle = "#666"; g.lineWidth = 1; g.font = "11px sans-serif";
    const step = niceStep((hi - lo) / 4);
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {
      g.beginPath(); g.moveTo(L, y(v)); g.lineTo(W - R, y(v)); g.stroke();
      g.fillText(fmt(v, step) + (this.unit ? " " + this.unit : ""), 2, y(v) + 4);
    }
    for (let s = 0; s <= this.spanS; s += 60) {
      const t = t1 - s * 1000;
      g.beginPath(); g.moveTo(x(t), T); g.lineTo(x(t), H - B); g.stroke();
      g.fillText(s === 0 ? "now" : "-" + s / 60 + " min", x(t) - 14, H - 5);
    }
    // markers
    g.strokeStyle = "#555"; g.setLineDash([4, 3]);
    this.markers.forEach((m, i) => {
      if (m.t_ms < t0 || m.t_ms > t1) return;
      g.beginPath(); g.moveTo(x(m.t_ms), T); g.lineTo(x(m.t_ms), H - B); g.stroke();
      g.fillText(m.label, x(m.t_ms) + 3, T + 10 + (i % 4) * 12);  // staggered: close markers stay legible
    });
    g.setLineDash([]);
    // series (a null value breaks the line)
    g.lineWidth = 1.6;
    for (const s of this.series.values()) {
      g.strokeStyle = s.color; g.beginPath();
      let pen = false;
      for (const [t, v] of s.points) {
        if (t < t0 || v === null) { pen = false; continue; }
        if (pen) g.lineTo(x(t), y(v)); else { g.moveTo(x(t), y(v)); pen = true; }
      }
      g.stroke();
    }
  }
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

function fmt(v, step) {
  const d = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
  return v.toFixed(d);
}

window.TimePlot = TimePlot;
