"""The operator page `winclip-inspect --serve` shows: one self-contained HTML document (no external assets).

It rebuilds itself from the JSON endpoints (server.py): /status.json every
second, the trend and the gallery every two. Data from the run (source names,
regions, who/why) goes into the DOM as text, never as HTML, and into URLs
through encodeURIComponent. Writes send the operator token the person typed
(kept in this browser tab's sessionStorage only) as `Authorization: Bearer`.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>winclip live</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
:root{--bg:#111;--panel:#1c1c1c;--line:#333;--text:#ddd;--dim:#8a8a8a;--bad:#ff5c5c;--good:#5fd35f;--warn:#ffbf3c}
*{box-sizing:border-box}
body{font:14px system-ui,sans-serif;margin:0;background:var(--bg);color:var(--text)}
header{padding:10px 16px;background:var(--panel);border-bottom:1px solid var(--line)}
header .row{display:flex;flex-wrap:wrap;gap:8px 20px;align-items:baseline}
header h1{font-size:17px;margin:0;color:#fff}
.k{color:var(--dim)}.v{color:#fff;font-weight:600}
#run{margin-top:6px}
#operator{margin-top:8px;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
#operator input{background:#000;color:#fff;border:1px solid #555;border-radius:4px;padding:4px 6px;width:180px}
button{background:#2d4f7c;color:#fff;border:0;border-radius:4px;padding:5px 10px;font:inherit;cursor:pointer}
button:disabled{background:#3a3a3a;color:#888;cursor:not-allowed}
button.secondary{background:#444}
#access{padding:2px 8px;border-radius:3px;font-size:12px;color:#000}
#access.rw{background:var(--good)}#access.ro{background:#aaa}
#message{color:var(--warn)}#message.said-ok{color:var(--good)}#message.said-err{color:var(--bad);font-weight:600}
#stale{color:var(--bad);display:none;font-weight:600}
#drift{display:none;background:#5a1d1d;color:#fff;border-bottom:2px solid var(--bad);padding:10px 16px;font-size:15px}
#drift b{color:#ffd2d2}
main{padding:14px;display:flex;flex-direction:column;gap:18px}
#sources{display:flex;flex-wrap:wrap;gap:14px}
.card{background:var(--panel);border:3px solid var(--line);border-radius:6px;padding:8px;width:440px}
.card.anomalous{border-color:var(--bad)}
.card h2{font-size:15px;margin:0 0 6px;word-break:break-all}
.pic{position:relative;background:#000;min-height:120px}
.pic img{width:100%;display:block}
.pic.down img{filter:grayscale(1) brightness(.55)}
.pic .stamp{position:absolute;left:0;bottom:0;background:rgba(0,0,0,.78);color:#fff;padding:2px 6px;font-size:12px}
.pic.down .stamp{background:var(--bad);color:#000;font-weight:700}
.none{color:#666;text-align:center;line-height:120px}
.badge{padding:1px 6px;border-radius:3px;font-size:12px;margin-left:6px;color:#000}
.ok{background:var(--good)}.starting{background:#aaa}.reconnecting{background:var(--warn)}.lost{background:var(--bad)}.ended{background:#888}
.stats{margin-top:6px;color:#bbb}
.trend{margin-top:8px;background:#0b0b0b;border:1px solid #2a2a2a}
.trend text{fill:#aaa;font-size:10px}
h3{margin:0 0 8px;font-size:15px;color:#fff}
#gallery{display:flex;flex-wrap:wrap;gap:12px}
.item{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:6px;width:260px}
.item .meta{font-size:12px;color:#ccc;margin:4px 0;word-break:break-all}
.item .score{color:var(--bad);font-weight:700}
.item.taught{border-color:var(--good)}
.item .taughtmark{color:var(--good);font-weight:600}
#pager{display:flex;gap:10px;align-items:center;margin-top:8px}
</style></head><body>
<header>
  <div class="row"><h1>winclip live</h1><a href="review" style="color:#7fb2ff">review desk</a><span id="totals"></span><span id="stale">page not updating: run stopped?</span></div>
  <div class="row" id="run"></div>
  <div id="operator">
    <span id="access" class="ro">read-only</span>
    <input id="token" type="password" autocomplete="off" placeholder="operator token" aria-label="operator token">
    <input id="who" type="text" placeholder="your name" aria-label="your name">
    <button id="undo" class="secondary" title="go back to the profile version this one was made from">Undo last change</button>
    <span id="message" role="status"></span>
  </div>
</header>
<div id="drift" role="alert"></div>
<main>
  <section><div id="sources"></div></section>
  <section><h3>Flagged frames <span class="k" id="gallerycount"></span></h3><div id="gallery"></div>
    <div id="pager"><button id="newer" class="secondary">newest</button><button id="older" class="secondary">older</button><span class="k" id="pageinfo"></span></div>
  </section>
</main>
<script>
"use strict";
const fmt = (v, d) => v === null || v === undefined ? "-" : Number(v).toFixed(d);
const clock = t => t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "-";
const ago = t => { if (!t) return ""; const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`; };
const DOWN = new Set(["reconnecting", "lost", "ended"]);
let state = {sources: {}, operator: null}, galleryBefore = null, galleryPages = [];
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function pair(parent, key, value) { parent.appendChild(el("span", "k", key + " ")); parent.appendChild(el("span", "v", value));
  parent.appendChild(document.createTextNode("  ")); }
function say(text, kind) { const m = document.getElementById("message"); m.textContent = text; m.className = kind ? "said-" + kind : ""; }
document.getElementById("token").value = sessionStorage.getItem("winclip-token") || "";
document.getElementById("who").value = localStorage.getItem("winclip-who") || "";
document.getElementById("token").addEventListener("change", e => sessionStorage.setItem("winclip-token", e.target.value.trim()));
document.getElementById("who").addEventListener("change", e => localStorage.setItem("winclip-who", e.target.value.trim()));

async function write(path, body) {
  const token = document.getElementById("token").value.trim();
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const who = document.getElementById("who").value.trim();
  let r;
  try { r = await fetch(path, {method: "POST", headers, body: JSON.stringify({...body, ...(who ? {who} : {})})}); }
  catch (e) { say("the run does not answer", "err"); return null; }
  let data = {};
  try { data = await r.json(); } catch (e) {}
  if (!r.ok) { say("refused: " + (data.error || r.status), "err"); return null; }
  return data.job;
}
async function teachItem(id, button) {
  button.disabled = true;
  const job = await write("api/teach", {item: id, why: "marked good on the live page"});
  if (job) { say(`teaching frame ${id}: ${job.state}`, "ok"); watchJob(job.id); } else button.disabled = false;
}
document.getElementById("undo").addEventListener("click", async () => {
  const job = await write("api/undo", {why: "undo on the live page"});
  if (job) { say(`undo: ${job.state}`, "ok"); watchJob(job.id); }
});
function watchJob(id) {
  const check = () => {
    const job = (state.operator && state.operator.jobs || []).find(j => j.id === id);
    if (job && (job.state === "applied" || job.state === "failed")) {
      say(job.state === "applied" ? `${job.action}: profile version ${job.version} in use` : `${job.action} failed: ${job.detail}`,
          job.state === "applied" ? "ok" : "err");
      refreshGallery(); return;
    }
    setTimeout(check, 500);
  };
  check();
}

function card(name) {
  const id = "src-" + encodeURIComponent(name);
  let c = document.getElementById(id);
  if (c) return c;
  c = el("div", "card"); c.id = id; c.dataset.source = name;
  const h = el("h2"); h.appendChild(el("span", "name", name)); h.appendChild(el("span", "badge")); c.appendChild(h);
  const pic = el("div", "pic"); pic.appendChild(el("div", "none overlay", "no overlay yet"));
  pic.appendChild(el("span", "stamp", "")); c.appendChild(pic);
  c.appendChild(el("div", "stats"));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "trend"); svg.setAttribute("width", "420"); svg.setAttribute("height", "110");
  svg.setAttribute("viewBox", "0 0 420 110"); c.appendChild(svg);
  document.getElementById("sources").appendChild(c);
  return c;
}

async function refresh() {
  let s;
  try { s = await (await fetch("status.json", {cache: "no-store"})).json(); }
  catch (e) { document.getElementById("stale").style.display = "inline"; return; }
  state = s;
  document.getElementById("stale").style.display = "none";
  const totals = document.getElementById("totals"); totals.textContent = "";
  const sinkErrors = Object.values(s.sink_errors).reduce((a, b) => a + b, 0);
  pair(totals, "scored", s.scored); pair(totals, "anomalous", s.anomalous); pair(totals, "errors", s.errors);
  pair(totals, "dropped", s.dropped); pair(totals, "p50/p95", fmt(s.latency_ms.p50, 0) + "/" + fmt(s.latency_ms.p95, 0) + " ms");
  pair(totals, "fps", fmt(s.fps, 2)); pair(totals, "sink errors", sinkErrors); pair(totals, "uptime", fmt(s.uptime_s, 0) + " s");
  const op = s.operator, run = document.getElementById("run"); run.textContent = "";
  if (op) {
    pair(run, "engine", op.engine);
    pair(run, "profile", op.profile ? `${op.profile}${op.version ? " · version " + op.version : ""}` : "none");
    pair(run, "image threshold", fmt(op.threshold, 4)); pair(run, "pixel threshold", fmt(op.pixel_threshold, 4));
    const access = document.getElementById("access");
    access.textContent = op.access.writable ? (op.teach ? "writable with token" : "no teaching") : "read-only";
    access.className = op.access.writable && op.teach ? "rw" : "ro";
    access.title = op.teach_refusal || "";
    document.getElementById("undo").disabled = !(op.access.writable && op.teach);
    const drifting = Object.entries(op.drift).filter(([, d]) => d.drifting);
    const banner = document.getElementById("drift");
    banner.style.display = drifting.length ? "block" : "none"; banner.textContent = "";
    for (const [source, d] of drifting) {
      const line = el("div"); line.appendChild(el("b", "", "DRIFT "));
      line.appendChild(document.createTextNode(`${source}: since ${clock(d.since)} the scores of parts judged normal ` +
        `no longer look like the ${d.reference === "profile" ? "profile's normals" : "start of the run"} ` +
        `(KS distance ${fmt(d.distance, 2)}); check lighting, camera and material before false alarms flood.`));
      banner.appendChild(line);
    }
  }
  for (const [name, src] of Object.entries(s.sources)) {
    const c = card(name), badge = c.querySelector(".badge"), pic = c.querySelector(".pic");
    badge.textContent = src.health; badge.className = "badge " + src.health; badge.title = src.detail;
    c.classList.toggle("anomalous", src.last_anomalous === true);
    const down = DOWN.has(src.health);
    pic.classList.toggle("down", down);
    pic.querySelector(".stamp").textContent = !src.overlay_time ? "" : (down ? `SOURCE ${src.health.toUpperCase()} since ` +
      `${clock(src.since)} · ` : "") + `captured ${clock(src.overlay_time)} (${ago(src.overlay_time)})`;
    c.querySelector(".stats").textContent = [`score ${fmt(src.last_score, 4)}`, `scored ${src.scored}`,
      `anomalous ${src.anomalous}`, `errors ${src.errors}`, `dropped ${src.dropped}`, src.detail].filter(Boolean).join(" · ");
    if (src.has_overlay && !c.loading && c.shown !== src.overlay_time) {  // load off-screen, swap when complete
      const next = new Image(); c.loading = true; next.className = "overlay"; next.alt = "latest overlay of " + name;
      next.onload = () => { c.querySelector(".overlay").replaceWith(next); c.loading = false; c.shown = src.overlay_time; };
      next.onerror = () => { c.loading = false; };
      next.src = "overlay/" + encodeURIComponent(name) + ".jpg?t=" + Date.now();
    }
  }
}

function drawTrend(svg, points, windowS, now) {
  const NS = "http://www.w3.org/2000/svg", W = 420, H = 110, L = 34, R = 6, T = 8, B = 16;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const add = (tag, attrs, text) => { const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text;
    svg.appendChild(e); return e; };
  if (!points.length) { add("text", {x: 150, y: 58}, "no scores yet"); return; }
  const vals = points.flatMap(p => [p[1], p[3], ...(p[6] === null ? [] : [p[6]])]);
  let lo = Math.min(...vals), hi = Math.max(...vals); const pad = Math.max((hi - lo) * 0.12, 1e-4); lo -= pad; hi += pad;
  const span = Math.min(windowS, Math.max(60, now - points[0][0] + 5));  // the last N minutes, or as long as the run
  const x = t => L + (W - L - R) * (1 - (now - t) / span), y = v => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  add("text", {x: 2, y: T + 8}, hi.toFixed(3)); add("text", {x: 2, y: H - B}, lo.toFixed(3));
  add("text", {x: L, y: H - 3}, span >= 120 ? `-${Math.round(span / 60)} min` : `-${Math.round(span)} s`);
  add("text", {x: W - 24, y: H - 3}, "now");
  const band = points.map(p => `${x(p[0])},${y(p[3])}`).concat(points.slice().reverse().map(p => `${x(p[0])},${y(p[1])}`));
  add("polygon", {points: band.join(" "), fill: "rgba(90,150,255,.25)", stroke: "none"});
  add("polyline", {points: points.map(p => `${x(p[0])},${y(p[2])}`).join(" "), fill: "none", stroke: "#7fb2ff", "stroke-width": 1.5});
  const steps = points.filter(p => p[6] !== null);
  if (steps.length) {
    const line = [[L, steps[0][6]], ...steps.map(p => [x(p[0]), p[6]]), [W - R, steps[steps.length - 1][6]]];
    add("polyline", {points: line.map(([px, v]) => `${px},${y(v)}`).join(" "), fill: "none", stroke: "#ff5c5c",
      "stroke-width": 1.5, "stroke-dasharray": "5 3", class: "threshold"});
    const last = steps[steps.length - 1];
    add("text", {x: L + 4, y: Math.max(T + 8, y(last[6]) - 3), fill: "#ff8a8a"}, "threshold " + last[6].toFixed(4));
  }
  for (const p of points.filter(p => p[5] > 0)) add("circle", {cx: x(p[0]), cy: y(p[3]), r: 2.5, fill: "#ff5c5c"});
}
async function refreshTrend() {
  let t; try { t = await (await fetch("api/trend", {cache: "no-store"})).json(); } catch (e) { return; }
  for (const [name, points] of Object.entries(t.sources)) drawTrend(card(name).querySelector("svg.trend"), points, t.window_s, t.now);
}

async function refreshGallery() {
  const url = "api/gallery" + (galleryBefore ? "?before=" + galleryBefore : "");
  let g; try { g = await (await fetch(url, {cache: "no-store"})).json(); } catch (e) { return; }
  const writable = state.operator && state.operator.access.writable && state.operator.teach;
  const down = name => DOWN.has(((state.sources || {})[name] || {}).health);
  const box = document.getElementById("gallery");
  const signature = JSON.stringify([writable, g.total, g.older, g.items.map(i => [i.id, i.taught, i.picture, i.original, down(i.source)])]);
  if (box.dataset.signature === signature) return;  // unchanged: no flicker, a button being clicked stays
  box.dataset.signature = signature; box.textContent = "";
  document.getElementById("gallerycount").textContent = `(${g.total} in this run)`;
  for (const it of g.items) {
    const item = el("div", "item" + (it.taught ? " taught" : "")); item.dataset.id = it.id;
    const pic = el("div", "pic" + (down(it.source) ? " down" : ""));
    if (it.picture) { const img = el("img"); img.alt = `overlay of ${it.source} frame ${it.frame}`; img.src = `gallery/${it.id}.jpg`; pic.appendChild(img); }
    else pic.appendChild(el("div", "none", "picture no longer kept"));
    pic.appendChild(el("span", "stamp", (down(it.source) ? "source down · " : "") + `captured ${clock(it.time)}`));
    item.appendChild(pic);
    const meta = el("div", "meta");
    meta.appendChild(el("span", "score", `score ${fmt(it.score, 4)}`));
    meta.appendChild(document.createTextNode(` / threshold ${fmt(it.threshold, 4)} · ${it.regions.length} region(s) · ` +
      `${it.source} frame ${it.frame}` + (it.version ? ` · v${it.version}` : "")));
    item.appendChild(meta);
    if (it.taught) item.appendChild(el("div", "taughtmark", `taught: good part in version ${it.taught}`));
    else {
      const b = el("button", "teach", "this part is good");
      b.disabled = !writable || !it.original;
      b.title = !it.original ? "its original pixels are no longer kept" : !writable ? "read-only page" :
        "add this frame to the line's memory as a new profile version";
      b.addEventListener("click", () => teachItem(it.id, b)); item.appendChild(b);
    }
    box.appendChild(item);
  }
  document.getElementById("older").disabled = g.older === null;
  document.getElementById("older").onclick = () => { galleryPages.push(galleryBefore); galleryBefore = g.older; refreshGallery(); };
  document.getElementById("newer").disabled = galleryBefore === null;
  document.getElementById("newer").onclick = () => { galleryBefore = null; galleryPages = []; refreshGallery(); };
  document.getElementById("pageinfo").textContent = galleryBefore === null ? "newest first" : "older frames";
}
refresh().then(() => { refreshTrend(); refreshGallery(); });
setInterval(refresh, 1000);
setInterval(refreshTrend, 2000);
setInterval(() => { if (galleryBefore === null) refreshGallery(); }, 2000);
</script></body></html>
"""
