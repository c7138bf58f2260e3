"""The operator page `winclip-inspect --serve` shows: one self-contained HTML document (no external assets).

It rebuilds itself from the JSON endpoints (server.py): /status.json every
poll interval (the status says how long), the trend and the gallery every two
seconds. It never looks live when it is not: with no new status for two poll
intervals the whole page greys and says since when the run has not answered
(by the run's own clock, the status' `now`), and a source whose newest frame is
older than the status' `stale_frame_s` greys the same way. A card's picture,
border, verdict and score are one snapshot: the status names the overlay
(`overlay_seq`) with its frame's score and verdict, the picture is fetched by
that number, and all of them change together when it has loaded.

"This part is good" is two steps: a preview (what the teach would do to the
thresholds and to the line's recent frames) in a dialog, then its confirmation.
Results are shown beside the button that asked. Data from the run (source
names, regions, who/why) goes into the DOM as text, never as HTML, and into
URLs through encodeURIComponent. Writes send the operator token the person
typed (kept in this browser tab's sessionStorage only) as `Authorization: Bearer`.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>winclip live</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
:root{--bg:#111;--panel:#1c1c1c;--line:#333;--text:#ddd;--dim:#8a8a8a;--bad:#ff5c5c;--good:#5fd35f;--warn:#ffbf3c}
*{box-sizing:border-box}
body{font:14px system-ui,sans-serif;margin:0;background:var(--bg);color:var(--text);overflow-wrap:anywhere}
header{padding:10px 12px;background:var(--panel);border-bottom:1px solid var(--line)}
header .row{display:flex;flex-wrap:wrap;gap:4px 16px;align-items:baseline}
.narrow{display:none}
#totals>span{margin-right:12px;white-space:nowrap;display:inline-block}
header h1{font-size:17px;margin:0;color:#fff}
.k{color:var(--dim)}.v{color:#fff;font-weight:600}
#run{margin-top:6px}
#operator{margin-top:8px;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
#operator input{background:#000;color:#fff;border:1px solid #555;border-radius:4px;padding:5px 6px;flex:1 1 130px;max-width:200px;min-width:0}
button{background:#2d4f7c;color:#fff;border:0;border-radius:4px;padding:6px 10px;font:inherit;cursor:pointer;min-height:32px}
button:disabled{background:#3a3a3a;color:#888;cursor:not-allowed}
button.secondary{background:#444}button.danger{background:#8a2d2d}
#access{padding:2px 8px;border-radius:3px;font-size:12px;color:#000}
#access.rw{background:var(--good)}#access.ro{background:#aaa}
.result{font-size:13px;color:var(--warn)}.result.said-ok{color:var(--good)}.result.said-err{color:var(--bad);font-weight:600}
#runstale{display:none;position:sticky;top:0;z-index:5;background:#6b0f0f;color:#fff;font-size:22px;font-weight:700;
  padding:12px 14px;border-bottom:3px solid var(--bad);text-align:center}
body.stale #runstale{display:block}
#drift{display:none;background:#5a1d1d;color:#fff;border-bottom:2px solid var(--bad);padding:10px 14px;font-size:15px}
#drift b{color:#ffd2d2}
main{padding:12px;display:flex;flex-direction:column;gap:18px}
#sources{display:flex;flex-wrap:wrap;gap:14px}
.card{background:var(--panel);border:3px solid var(--line);border-radius:6px;padding:8px;width:440px;max-width:100%}
.card.anomalous{border-color:var(--bad)}.card.good{border-color:#2f6f2f}
.card h2{font-size:15px;margin:0 0 6px;display:flex;flex-wrap:wrap;gap:4px;align-items:baseline}
.card h2 .name{word-break:break-all}
.pic{position:relative;background:#000;min-height:120px}
.pic img{width:100%;display:block}
.stalemsg{display:none;position:absolute;inset:0;align-items:center;justify-content:center;text-align:center;padding:8px;
  color:#fff;font-size:20px;font-weight:700;background:rgba(60,0,0,.55)}
.card.stale,.card.down{border-color:#555}
.card.stale .pic img,.card.down .pic img,body.stale .pic img{filter:grayscale(1) brightness(.45)}
.card.stale .stalemsg,body.stale .card .stalemsg{display:flex}
.card.stale .verdict,body.stale .card .verdict{visibility:hidden}
body.stale .card{border-color:#555}
body.stale .badge,.card.stale .badge{background:#555;color:#ccc;text-decoration:line-through}
.caption{font-size:12px;color:#ccc;margin-top:3px;min-height:16px}
.card.stale .caption,.card.down .caption,.item.down .caption{color:var(--bad);font-weight:700}
.verdict{font-weight:700;margin-top:4px}.verdict.anomalous{color:var(--bad)}.verdict.good{color:var(--good)}
.none{color:#666;text-align:center;line-height:120px}
.badge{padding:1px 6px;border-radius:3px;font-size:12px;color:#000}
.ok{background:var(--good)}.starting{background:#aaa}.reconnecting{background:var(--warn)}.lost{background:var(--bad)}.ended{background:#888}
.stats{margin-top:4px;color:#bbb;font-size:13px}
.trend{margin-top:8px;background:#0b0b0b;border:1px solid #2a2a2a;width:100%;height:auto;display:block}
.trend text{fill:#aaa;font-size:10px}
h3{margin:0 0 8px;font-size:15px;color:#fff}
#gallery{display:flex;flex-wrap:wrap;gap:12px}
.item{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:6px;width:260px;max-width:100%}
.item.down .pic img{filter:grayscale(1) brightness(.55)}
.item .meta{font-size:12px;color:#ccc;margin:4px 0;word-break:break-all}
.item .score{color:var(--bad);font-weight:700}
.item.taught{border-color:var(--good)}
.item .taughtmark{color:var(--good);font-weight:600}.item .undone{color:var(--warn);font-size:12px}
.item .act{display:flex;flex-wrap:wrap;gap:6px;align-items:center}
#pager{display:flex;gap:10px;align-items:center;margin-top:8px}
#dialog{display:none;position:fixed;inset:0;z-index:10;background:rgba(0,0,0,.7);align-items:center;justify-content:center;padding:10px}
#dialog.open{display:flex}
#dialog .box{background:#222;border:2px solid #555;border-radius:8px;padding:14px;width:min(560px,100%);max-height:92vh;overflow:auto}
#dialog h4{margin:0 0 8px;font-size:16px;color:#fff}
#dialog ul{margin:6px 0 10px;padding-left:18px}#dialog li{margin:3px 0}
#dialog li.warn{color:var(--warn);font-weight:700}
#dialog .buttons{display:flex;gap:10px;justify-content:flex-end;flex-wrap:wrap}
@media (max-width:520px){main{padding:6px}header{padding:8px}#run{font-size:12px}.wide{display:none}.narrow{display:inline}.card{padding:6px}.item{width:100%}
  #runstale{font-size:18px}}
</style></head><body>
<div id="runstale" role="alert"></div>
<header>
  <div class="row"><h1>winclip live</h1><a href="review" style="color:#7fb2ff">review desk</a><span id="totals"></span></div>
  <div class="row" id="run"></div>
  <div id="operator">
    <span id="access" class="ro">read-only</span>
    <input id="token" type="password" autocomplete="off" placeholder="operator token" aria-label="operator token">
    <input id="who" type="text" placeholder="your name" aria-label="your name">
    <button id="undo" class="secondary" title="go back to the profile version this one was made from">Undo last change</button>
    <span id="undoresult" class="result" role="status"></span>
    <button id="reload" class="secondary" hidden title="re-read the station file: cameras, thresholds, profiles, sinks">Reload station file</button>
    <span id="reloadresult" class="result" role="status"></span>
  </div>
</header>
<div id="drift" role="alert"></div>
<main>
  <section><div id="sources"></div></section>
  <section><h3>Flagged frames <span class="k" id="gallerycount"></span></h3><div id="gallery"></div>
    <div id="pager"><button id="newer" class="secondary">newest</button><button id="older" class="secondary">older</button><span class="k" id="pageinfo"></span></div>
  </section>
</main>
<div id="dialog" role="dialog" aria-modal="true" aria-labelledby="dialogtitle"><div class="box">
  <h4 id="dialogtitle"></h4><ul id="dialoglines"></ul>
  <div class="buttons"><button id="dialogno" class="secondary">Cancel</button><button id="dialogyes">Confirm</button></div>
</div></div>
<script>
"use strict";
const fmt = (v, d) => v === null || v === undefined ? "-" : Number(v).toFixed(d);
const clock = t => t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "-";
const ago = (t, now) => { if (!t) return ""; const s = Math.max(0, now - t);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`; };
const DOWN = new Set(["reconnecting", "lost", "ended"]);
let state = {sources: {}, operator: null}, galleryBefore = null, galleryPages = [];
let pollMs = 1000, lastAnswer = performance.now(), lastRunClock = null;
const results = {};  // gallery id -> [text, kind]: kept across gallery redraws
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function pair(parent, key, value, cls) { const p = el("span", cls || ""); p.appendChild(el("span", "k", key + " "));
  p.appendChild(el("span", "v", value)); parent.appendChild(p); }
function show(target, text, kind) { target.textContent = text; target.className = "result" + (kind ? " said-" + kind : ""); }
function sayItem(id, text, kind) { results[id] = [text, kind];
  const r = document.querySelector(`#gallery .item[data-id="${id}"] .result`); if (r) show(r, text, kind); }
document.getElementById("token").value = sessionStorage.getItem("winclip-token") || "";
document.getElementById("who").value = localStorage.getItem("winclip-who") || "";
document.getElementById("token").addEventListener("input", e => sessionStorage.setItem("winclip-token", e.target.value.trim()));
document.getElementById("who").addEventListener("input", e => localStorage.setItem("winclip-who", e.target.value.trim()));

function ask(title, lines, yes) {  // a confirmation dialog; resolves true only on the confirm button
  return new Promise(resolve => {
    const d = document.getElementById("dialog"), list = document.getElementById("dialoglines");
    document.getElementById("dialogtitle").textContent = title; list.textContent = "";
    for (const [text, warn] of lines) list.appendChild(el("li", warn ? "warn" : "", text));
    const ok = document.getElementById("dialogyes"), no = document.getElementById("dialogno");
    ok.textContent = yes;
    const done = answer => { d.classList.remove("open"); ok.onclick = no.onclick = d.onkeydown = null; resolve(answer); };
    ok.onclick = () => done(true); no.onclick = () => done(false);
    d.onkeydown = e => { if (e.key === "Escape") done(false); };  // Escape cancels; Enter confirms (focused)
    d.classList.add("open"); ok.focus();
  });
}
async function post(path, body) {  // {ok, data} or {ok: false, error}
  const token = document.getElementById("token").value.trim();
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const who = document.getElementById("who").value.trim();
  let r;
  try { r = await fetch(path, {method: "POST", headers, body: JSON.stringify({...body, ...(who ? {who} : {})})}); }
  catch (e) { return {ok: false, error: "the run does not answer"}; }
  let data = {};
  try { data = await r.json(); } catch (e) {}
  return r.ok ? {ok: true, data} : {ok: false, error: "refused: " + (data.error || r.status)};
}
async function teachItem(it, button) {
  button.disabled = true; sayItem(it.id, "computing what this would change…");
  const p = await post("api/teach/preview", {item: it.id});
  if (!p.ok) { sayItem(it.id, p.error, "err"); button.disabled = false; return; }
  const v = p.data.preview, r = v.recent;
  const lines = v.words.map(w => [w, false]), at = text => lines.findIndex(([w]) => w.includes(text));
  if (r.anomalous_to_good) { const i = at("flagged frames would now pass");
    lines[i] = [lines[i][0] + " — check that none of them is a real defect", true]; }
  if (r.good_to_anomalous) { const i = at("good frames would now be flagged"); lines[i] = [lines[i][0] + " — new false alarms", true]; }
  const yes = await ask(`Teach ${it.source} frame ${it.frame} as a good part? (version ${v.base_version} -> a new version)`,
                        lines, "Teach it");
  if (!yes) { sayItem(it.id, "not taught (cancelled)"); button.disabled = false; return; }
  const c = await post("api/teach", {preview: v.id, why: "marked good on the live page"});
  if (!c.ok) { sayItem(it.id, c.error, "err"); button.disabled = false; return; }
  sayItem(it.id, `teaching: ${c.data.job.state}`, "ok");
  watchJob(c.data.job.id, (text, kind) => sayItem(it.id, text, kind));
}
document.getElementById("undo").addEventListener("click", async () => {
  const out = document.getElementById("undoresult"), op = state.operator || {};
  const yes = await ask(`Undo the last change of the line profile?`, [[`version ${op.version} in use now; the line goes ` +
    `back to the version it was made from (nothing is deleted)`, false]], "Undo");
  if (!yes) { show(out, "not undone (cancelled)"); return; }
  const u = await post("api/undo", {why: "undo on the live page"});
  if (!u.ok) { show(out, u.error, "err"); return; }
  show(out, `undo: ${u.data.job.state}`, "ok");
  watchJob(u.data.job.id, (text, kind) => show(out, text, kind));
});
document.getElementById("reload").addEventListener("click", async () => {
  const out = document.getElementById("reloadresult"), st = state.station || {};
  const yes = await ask(`Re-read the station file ${st.file}?`, [["changed cameras, thresholds, profiles, ROIs and " +
    "sinks apply between two frames; a file with a problem is refused and the station runs on as it is", false]], "Reload");
  if (!yes) { show(out, "not reloaded (cancelled)"); return; }
  const r = await post("api/station/reload", {});
  if (!r.ok) { show(out, r.error, "err"); return; }
  show(out, r.data.reload, "ok"); reloadAsked = st.seq;
});
let reloadAsked = null;  // the station's reload count when this page asked for one
function reloadOutcome(st) {  // the result of a reload asked for here, once the run has done it
  const out = document.getElementById("reloadresult");
  if (reloadAsked === null || !st.last || st.seq <= reloadAsked) return;
  if (st.last.event === "reloaded") {
    const what = ["added", "removed", "changed"].filter(k => (st.last[k] || []).length).map(k => `${k} ${st.last[k].join(", ")}`);
    show(out, "reloaded: " + (what.join("; ") || "nothing changed"), "ok");
  } else show(out, "refused: " + st.last.reason, "err");
  reloadAsked = null;
}
function watchJob(id, tell) {
  const check = () => {
    const job = (state.operator && state.operator.jobs || []).find(j => j.id === id);
    if (job && (job.state === "applied" || job.state === "failed")) {
      tell(job.state === "applied" ? `${job.action}: profile version ${job.version} in use` : `${job.action} failed: ${job.detail}`,
           job.state === "applied" ? "ok" : "err");
      refreshGallery(); return;
    }
    if (job) tell(`${job.action}: ${job.state}`, "ok");
    setTimeout(check, 500);
  };
  check();
}

function card(name) {
  const id = "src-" + encodeURIComponent(name);
  let c = document.getElementById(id);
  if (c) return c;
  c = el("div", "card"); c.id = id; c.dataset.source = name; c.shownSeq = 0;
  const h = el("h2"); h.appendChild(el("span", "name", name)); h.appendChild(el("span", "badge")); c.appendChild(h);
  const pic = el("div", "pic"); pic.appendChild(el("div", "none overlay", "no overlay yet"));
  pic.appendChild(el("div", "stalemsg", "")); c.appendChild(pic);
  c.appendChild(el("div", "caption", "")); c.appendChild(el("div", "verdict", ""));
  c.appendChild(el("div", "stats"));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "trend"); svg.setAttribute("viewBox", "0 0 420 110"); svg.setAttribute("preserveAspectRatio", "none");
  c.appendChild(svg);
  document.getElementById("sources").appendChild(c);
  return c;
}
function showSnapshot(c, shot) {  // picture, border, verdict and caption of one overlay, all at once
  c.shownSeq = shot.overlay_seq; c.shown = shot; caption(c);
  c.classList.toggle("anomalous", shot.overlay_anomalous === true); c.classList.toggle("good", shot.overlay_anomalous === false);
  const v = c.querySelector(".verdict");
  v.className = "verdict" + (shot.overlay_anomalous === true ? " anomalous" : shot.overlay_anomalous === false ? " good" : "");
  v.textContent = shot.overlay_anomalous === null ? `score ${fmt(shot.overlay_score, 4)}` :
    `${shot.overlay_anomalous ? "ANOMALOUS" : "good"} · score ${fmt(shot.overlay_score, 4)} ` +
    `${shot.overlay_anomalous ? "≥" : "<"} ${fmt(shot.overlay_threshold, 4)} · frame ${shot.overlay_frame}`;
}
const runNow = () => lastRunClock === null ? Date.now() / 1000 : lastRunClock + (performance.now() - lastAnswer) / 1000;
function caption(c) {  // the capture time of the picture shown, and how old it is by the run's clock
  const src = (state.sources || {})[c.dataset.source] || {}, shot = c.shown, down = DOWN.has(src.health);
  c.querySelector(".caption").textContent = !shot ? "" : (down ? `SOURCE ${src.health.toUpperCase()} since ` +
    `${clock(src.since)} · ` : "") + `captured ${clock(shot.overlay_time)} (${ago(shot.overlay_time, runNow())})`;
}
function markStale(c, text) {
  c.classList.toggle("stale", !!text); c.querySelector(".stalemsg").textContent = text || "";
}

function watchdog() {  // no status for two polls: the run is not answering, whatever the last one said
  const silent = performance.now() - lastAnswer > 2 * pollMs;
  document.body.classList.toggle("stale", silent);
  if (silent) {
    const text = lastRunClock === null ? "run not answering" : `run not answering since ${clock(lastRunClock)}`;
    document.getElementById("runstale").textContent = text + " — nothing on this page is live";
    for (const c of document.querySelectorAll(".card")) { c.querySelector(".stalemsg").textContent = text; caption(c); }
  }
}
async function refresh() {
  let s;
  try { const r = await fetch("status.json", {cache: "no-store"}); if (!r.ok) throw new Error(r.status); s = await r.json(); }
  catch (e) { watchdog(); return; }
  state = s; lastAnswer = performance.now(); lastRunClock = s.now; watchdog();
  if (s.page && s.page.poll_s * 1000 !== pollMs) { pollMs = s.page.poll_s * 1000; clearInterval(poller); poller = setInterval(refresh, pollMs); }
  const staleAfter = s.page ? s.page.stale_frame_s : 10;
  const totals = document.getElementById("totals"); totals.textContent = "";
  const sinkErrors = Object.values(s.sink_errors).reduce((a, b) => a + b, 0);
  pair(totals, "scored", s.scored); pair(totals, "anomalous", s.anomalous); pair(totals, "errors", s.errors);
  pair(totals, "dropped", s.dropped); pair(totals, "p50/p95", fmt(s.latency_ms.p50, 0) + "/" + fmt(s.latency_ms.p95, 0) + " ms");
  pair(totals, "fps", fmt(s.fps, 2)); pair(totals, "sink errors", sinkErrors); pair(totals, "uptime", fmt(s.uptime_s, 0) + " s");
  const op = s.operator, run = document.getElementById("run"); run.textContent = "";
  const reload = document.getElementById("reload");
  reload.hidden = !s.station; reload.disabled = !(op && op.access.writable);
  if (s.station) { pair(run, "station", s.station.file, "wide"); reloadOutcome(s.station); }
  if (op) {
    pair(run, "engine", op.engine, "wide");
    const version = op.version ? " · version " + op.version : "";
    pair(run, "profile", op.profile ? `${op.profile}${version}` : "none", "wide");  // narrow: its last folder only
    pair(run, "profile", op.profile ? `${op.profile.split("/").filter(Boolean).pop()}${version}` : "none", "narrow");
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
    const c = card(name), badge = c.querySelector(".badge");
    badge.textContent = src.health; badge.className = "badge " + src.health; badge.title = src.detail;
    const down = DOWN.has(src.health), newest = src.last_time || src.overlay_time;
    const old = newest !== null && s.now - newest > staleAfter;
    c.classList.toggle("down", down);
    markStale(c, down ? `source ${src.health} since ${clock(src.since)}` :
                 old ? `no new frame since ${clock(newest)}` : "");
    caption(c);
    c.querySelector(".stats").textContent = [src.judged_by, `scored ${src.scored}`, `anomalous ${src.anomalous}`, `errors ${src.errors}`,
      `dropped ${src.dropped}`, `lost ${src.losses}×`, src.detail].filter(Boolean).join(" · ");
    if (src.has_overlay && !c.loading && c.shownSeq !== src.overlay_seq) {  // load off-screen, swap when complete
      const next = new Image(), snap = {...src}; c.loading = true; next.className = "overlay";
      next.alt = `overlay of ${name} frame ${src.overlay_frame}`;
      next.onload = () => { c.querySelector(".overlay").replaceWith(next); showSnapshot(c, snap); c.loading = false; };
      next.onerror = () => { c.loading = false; };  // gone already: the next status names a newer one
      next.src = `overlay/${encodeURIComponent(name)}.jpg?seq=${src.overlay_seq}`;
    }
  }
}

function drawTrend(svg, points, windowS, now, bucketS) {
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
  // an outage is a gap, not a line across it: buckets further apart than 2.5 bucket widths start a new segment
  const segments = [[points[0]]];
  for (const p of points.slice(1)) {
    if (p[0] - segments[segments.length - 1].slice(-1)[0][0] > 2.5 * (bucketS || 2)) segments.push([]);
    segments[segments.length - 1].push(p);
  }
  for (const seg of segments) {
    const band = seg.map(p => `${x(p[0])},${y(p[3])}`).concat(seg.slice().reverse().map(p => `${x(p[0])},${y(p[1])}`));
    add("polygon", {points: band.join(" "), fill: "rgba(90,150,255,.25)", stroke: "none"});
    if (seg.length > 1) add("polyline", {points: seg.map(p => `${x(p[0])},${y(p[2])}`).join(" "), fill: "none",
      stroke: "#7fb2ff", "stroke-width": 1.5, class: "mean"});
    else add("circle", {cx: x(seg[0][0]), cy: y(seg[0][2]), r: 1.5, fill: "#7fb2ff", class: "mean"});
  }
  for (let i = 1; i < segments.length; i++) {  // say where nothing was scored
    const a = x(segments[i - 1].slice(-1)[0][0]), b = x(segments[i][0][0]);
    add("rect", {x: a, y: T, width: Math.max(1, b - a), height: H - T - B, fill: "rgba(255,255,255,.06)", class: "gap"});
  }
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
  for (const [name, points] of Object.entries(t.sources))
    drawTrend(card(name).querySelector("svg.trend"), points, t.window_s, t.now, t.bucket_s);
}

async function refreshGallery() {
  const url = "api/gallery" + (galleryBefore ? "?before=" + galleryBefore : "");
  let g; try { g = await (await fetch(url, {cache: "no-store"})).json(); } catch (e) { return; }
  const writable = state.operator && state.operator.access.writable && state.operator.teach;
  const down = name => DOWN.has(((state.sources || {})[name] || {}).health);
  const box = document.getElementById("gallery");
  const signature = JSON.stringify([writable, g.total, g.older, g.items.map(i => [i.id, i.taught, i.undone, i.picture, i.original, down(i.source)])]);
  if (box.dataset.signature === signature) return;  // unchanged: no flicker, a button being clicked stays
  box.dataset.signature = signature; box.textContent = "";
  document.getElementById("gallerycount").textContent = `(${g.total} in this run)`;
  for (const it of g.items) {
    const item = el("div", "item" + (it.taught ? " taught" : "") + (down(it.source) ? " down" : "")); item.dataset.id = it.id;
    const pic = el("div", "pic");
    if (it.picture) { const img = el("img"); img.alt = `overlay of ${it.source} frame ${it.frame}`; img.src = `gallery/${it.id}.jpg`; pic.appendChild(img); }
    else pic.appendChild(el("div", "none", "picture no longer kept"));
    item.appendChild(pic);
    item.appendChild(el("div", "caption", (down(it.source) ? "source down · " : "") + `captured ${clock(it.time)}`));
    const meta = el("div", "meta");
    meta.appendChild(el("span", "score", `score ${fmt(it.score, 4)}`));
    meta.appendChild(document.createTextNode(` / threshold ${fmt(it.threshold, 4)} · ${it.regions.length} region(s) · ` +
      `${it.source} frame ${it.frame}` + (it.version ? ` · v${it.version}` : "")));
    item.appendChild(meta);
    const act = el("div", "act");
    if (it.taught) act.appendChild(el("span", "taughtmark", `taught: good part in version ${it.taught}`));
    else {
      if (it.undone) act.appendChild(el("span", "undone", `taught into version ${it.undone}, undone`));
      const b = el("button", "teach", "this part is good");
      b.disabled = !writable || !it.original;
      b.title = !it.original ? "its original pixels are no longer kept" : !writable ? "read-only page" :
        "see what teaching this frame would change, then confirm";
      b.addEventListener("click", () => teachItem(it, b)); act.appendChild(b);
    }
    const r = el("span", "result"); r.setAttribute("role", "status");
    if (results[it.id]) show(r, ...results[it.id]);
    act.appendChild(r); item.appendChild(act);
    box.appendChild(item);
  }
  document.getElementById("older").disabled = g.older === null;
  document.getElementById("older").onclick = () => { galleryPages.push(galleryBefore); galleryBefore = g.older; refreshGallery(); };
  document.getElementById("newer").disabled = galleryBefore === null;
  document.getElementById("newer").onclick = () => { galleryBefore = null; galleryPages = []; refreshGallery(); };
  document.getElementById("pageinfo").textContent = galleryBefore === null ? "newest first" : "older frames";
}
let poller = setInterval(refresh, pollMs);
refresh().then(() => { refreshTrend(); refreshGallery(); });
setInterval(watchdog, 500);
setInterval(refreshTrend, 2000);
setInterval(() => { if (galleryBefore === null) refreshGallery(); }, 2000);
</script></body></html>
"""
