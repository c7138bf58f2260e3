"""The review desk page (`/review`): one self-contained HTML document (no external assets), like the live page.

It rebuilds itself from /api/review every three seconds (without redrawing when nothing changed, so a button
being pressed stays put). Data from the run goes into the DOM as text, never as HTML. Every write asks for a
confirmation first and shows its result beside the button that caused it. The operator token is the one the
live page keeps in this browser tab (sessionStorage), or typed here.
"""

from __future__ import annotations

REVIEW_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>winclip review desk</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
:root{--bg:#111;--panel:#1c1c1c;--line:#333;--text:#ddd;--dim:#8a8a8a;--bad:#ff5c5c;--good:#5fd35f;--warn:#ffbf3c;--ack:#7fb2ff}
*{box-sizing:border-box}
[hidden]{display:none!important}
body{font:14px system-ui,sans-serif;margin:0;background:var(--bg);color:var(--text)}
header{padding:10px 14px;background:var(--panel);border-bottom:1px solid var(--line);display:flex;flex-wrap:wrap;gap:8px 14px;align-items:center}
header h1{font-size:17px;margin:0;color:#fff}
a{color:var(--ack)}
input,select{background:#000;color:#fff;border:1px solid #555;border-radius:4px;padding:5px 6px;font:inherit;max-width:100%}
button{background:#2d4f7c;color:#fff;border:0;border-radius:4px;padding:7px 10px;font:inherit;cursor:pointer;min-height:34px}
button:disabled{background:#3a3a3a;color:#888;cursor:not-allowed}
button.secondary{background:#444}button.bad{background:#8a2a2a}button.ok{background:#2f6b2f}
.k{color:var(--dim)}
#access{padding:2px 8px;border-radius:3px;font-size:12px;color:#000;background:#aaa}#access.rw{background:var(--good)}
main{padding:12px;display:flex;flex-direction:column;gap:16px}
section{min-width:0}
h3{margin:0 0 8px;font-size:15px;color:#fff}
#filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end}
#filters label{display:flex;flex-direction:column;font-size:12px;color:var(--dim);gap:2px;min-width:0;max-width:100%}
#f-source{width:22em;max-width:calc(100vw - 30px)}
#timeline{width:100%;height:112px;background:#0b0b0b;border:1px solid #2a2a2a;display:block}
#timeline text{fill:#aaa;font-size:10px}
#episodes{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.episode{background:var(--panel);border:2px solid var(--line);border-radius:6px;padding:8px;min-width:0}
.episode.new{border-color:var(--bad)}.episode.acknowledged{border-color:var(--ack)}
.episode.good{border-color:var(--good)}.episode.defect{border-color:var(--warn)}
.episode.picked{outline:3px solid #fff}
.episode .pic{background:#000;min-height:80px;cursor:zoom-in;position:relative}
.episode .pic img{width:100%;display:block}
.none{color:#666;text-align:center;line-height:80px}
.episode h4{margin:6px 0 2px;font-size:14px;color:#fff;word-break:break-all}
.meta{font-size:12px;color:#ccc;margin:2px 0;word-break:break-word}
.score{color:var(--bad);font-weight:700}
.verdict{padding:1px 6px;border-radius:3px;font-size:12px;color:#000;margin-left:4px;white-space:nowrap;display:inline-block}
.verdict.new{background:var(--bad)}.verdict.acknowledged{background:var(--ack)}.verdict.good{background:var(--good)}.verdict.defect{background:var(--warn)}
.actions{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px;align-items:center}
.actions input{width:120px}
.result{font-size:12px;flex-basis:100%;min-height:1em}
.result.ok{color:var(--good)}.result.err{color:var(--bad);font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #2a2a2a;padding:5px 6px;text-align:left;vertical-align:top}
th{color:var(--dim);font-weight:500}
.scroll{overflow-x:auto}
tr.current td{color:#fff;font-weight:600}
#viewer{position:fixed;inset:0;background:#000;display:none;flex-direction:column;z-index:10}
#viewer.open{display:flex}
#viewer .bar{display:flex;flex-wrap:wrap;gap:6px;padding:8px;align-items:center;background:#1c1c1c}
#viewer .bar .title{flex:1 1 200px;color:#fff;word-break:break-all}
#viewer .stage{flex:1;overflow:hidden;position:relative;cursor:grab;touch-action:none}
#viewer .stage img{position:absolute;left:0;top:0;transform-origin:0 0;max-width:none;user-select:none}
#viewer button.on{background:#5a7fb0;outline:2px solid #fff}
dialog{background:#222;color:#eee;border:1px solid #666;border-radius:8px;max-width:min(520px,94vw);padding:16px}
dialog::backdrop{background:rgba(0,0,0,.6)}
dialog .buttons{display:flex;gap:10px;justify-content:flex-end;margin-top:14px}
@media (max-width:500px){main{padding:8px}#episodes{grid-template-columns:1fr}.hide-narrow{display:none}
  header input{width:100%}}
</style></head><body>
<header>
  <h1>winclip review desk</h1><a href="./">live page</a>
  <span id="access">read-only</span>
  <input id="token" type="password" autocomplete="off" placeholder="operator token" aria-label="operator token">
  <input id="who" type="text" placeholder="your name (unnamed token)" aria-label="your name">
  <span class="k" id="summary"></span>
</header>
<main>
  <section>
    <div id="filters">
      <label>source<select id="f-source"><option value="">all sources</option></select></label>
      <label>verdict<select id="f-verdict"><option value="">any</option><option value="new">not reviewed</option>
        <option value="acknowledged">acknowledged</option><option value="good">labelled good</option>
        <option value="defect">labelled defect</option></select></label>
      <label>time<select id="f-range"><option value="3600">last hour</option><option value="28800">last 8 h</option>
        <option value="86400" selected>last 24 h</option><option value="604800">last 7 days</option>
        <option value="0">everything kept</option><option value="custom">from / to</option></select></label>
      <label id="l-from" hidden>from<input id="f-from" type="datetime-local"></label>
      <label id="l-to" hidden>to<input id="f-to" type="datetime-local"></label>
      <span class="k" id="matched"></span>
    </div>
  </section>
  <section><svg id="timeline" role="img" aria-label="timeline of episodes, versions, drift and outages"></svg>
    <div class="k" style="font-size:12px">episodes (red new, blue acknowledged, green good, yellow defect) · versions ◆ · drift (orange) · outages (grey)</div></section>
  <section><h3>Episodes <span class="k" id="gap"></span></h3><div id="episodes"></div></section>
  <section><h3>History: teach, undo, version choices, drift, outages</h3><div class="scroll"><table id="history"><thead>
    <tr><th>when</th><th>what</th><th>source / version</th><th class="hide-narrow">who / detail</th></tr></thead><tbody></tbody></table></div></section>
  <section><h3>Profile versions</h3><div class="scroll"><table id="versions"><thead>
    <tr><th>version</th><th>made</th><th class="hide-narrow">thresholds</th><th></th></tr></thead><tbody></tbody></table></div></section>
</main>
<div id="viewer" role="dialog" aria-label="episode picture">
  <div class="bar"><span class="title" id="v-title"></span>
    <button id="v-heat" class="secondary">heat map</button><button id="v-orig" class="secondary">original</button>
    <button id="v-out" class="secondary" aria-label="zoom out">−</button><span id="v-zoom" class="k">100%</span>
    <button id="v-in" class="secondary" aria-label="zoom in">+</button><button id="v-fit" class="secondary">fit</button>
    <button id="v-close">close</button></div>
  <div class="stage" id="v-stage"><img id="v-img" alt=""></div>
</div>
<dialog id="confirm"><p id="c-text"></p><div class="buttons">
  <button id="c-no" class="secondary">Cancel</button><button id="c-yes">Confirm</button></div></dialog>
<script>
"use strict";
const fmt = (v, d) => v === null || v === undefined ? "-" : Number(v).toFixed(d);
const when = t => t ? new Date(t * 1000).toLocaleString([], {hour12: false}) : "-";
const clock = t => t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "-";
const isoTime = s => s ? Date.parse(s) / 1000 : null;
let data = null, picked = null;
const kinds = {};  // defect kinds typed, by episode: kept across redraws
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
const $ = id => document.getElementById(id);
$("token").value = sessionStorage.getItem("winclip-token") || "";
$("who").value = localStorage.getItem("winclip-who") || "";
$("token").addEventListener("change", e => sessionStorage.setItem("winclip-token", e.target.value.trim()));
$("who").addEventListener("change", e => localStorage.setItem("winclip-who", e.target.value.trim()));

function confirmThen(text) {  // a modal question; resolves true only on Confirm
  return new Promise(resolve => {
    const d = $("confirm"); $("c-text").textContent = text;
    const done = answer => { d.close(); $("c-yes").onclick = $("c-no").onclick = d.oncancel = null; resolve(answer); };
    $("c-yes").onclick = () => done(true); $("c-no").onclick = () => done(false);
    d.oncancel = e => { e.preventDefault(); done(false); };
    d.showModal();
  });
}
const said = {};  // what each action answered, by the episode or version it was about: kept across redraws
function tell(result, text, kind) {  // beside the button, even if the page redrew its card meanwhile
  const key = result.dataset.key; if (key) said[key] = [text, kind];
  const shown = key ? document.querySelectorAll(`.result[data-key="${key}"]`) : [];
  for (const r of [result, ...shown]) { r.textContent = text; r.className = "result " + kind; } }
function resultFor(key) { const r = el("span", "result"); r.dataset.key = key;
  if (said[key]) { r.textContent = said[key][0]; r.className = "result " + said[key][1]; } return r; }
async function write(path, body, result) {
  const token = $("token").value.trim(), who = $("who").value.trim();
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  let r;
  try { r = await fetch(path, {method: "POST", headers, body: JSON.stringify({...body, ...(who ? {who} : {})})}); }
  catch (e) { tell(result, "the run does not answer", "err"); return null; }
  let answer = {};
  try { answer = await r.json(); } catch (e) {}
  if (!r.ok) { tell(result, (r.status === 401 || r.status === 403 ? "refused: " : "failed: ") + (answer.error || r.status), "err"); return null; }
  return answer;
}

function query() {
  const p = new URLSearchParams(), range = $("f-range").value;
  if ($("f-source").value) p.set("source", $("f-source").value);
  if ($("f-verdict").value) p.set("verdict", $("f-verdict").value);
  if (range === "custom") {
    const from = isoTime($("f-from").value), to = isoTime($("f-to").value);
    if (from) p.set("since", from); if (to) p.set("until", to);
  } else if (Number(range) > 0) p.set("within", range);  // the run counts back from its own clock, not the tablet's
  return p.toString();
}
for (const id of ["f-source", "f-verdict", "f-range", "f-from", "f-to"]) $(id).addEventListener("change", () => {
  const custom = $("f-range").value === "custom"; $("l-from").hidden = $("l-to").hidden = !custom; refresh(true); });

async function refresh(force) {
  let d; try { d = await (await fetch("api/review?" + query(), {cache: "no-store"})).json(); } catch (e) { return; }
  const signature = JSON.stringify([d.episodes, d.history, d.profile, d.access.writable, d.sources]);
  data = d;
  drawTimeline();
  if (!force && $("episodes").dataset.signature === signature) return;
  const typing = document.activeElement && document.activeElement.matches("#episodes input");
  if (!force && typing) return;  // redraw after the person has finished typing a defect kind
  $("episodes").dataset.signature = signature;
  const writable = d.access.writable;
  $("access").textContent = writable ? "writable with token" : "read-only"; $("access").className = writable ? "rw" : "";
  const v = d.verdicts;
  $("summary").textContent = `${d.total} episodes kept: ${v.new} not reviewed, ${v.acknowledged} acknowledged, ` +
    `${v.good} good, ${v.defect} defect` + (d.persisted ? "" : " · not saved (the run has no --out)");
  $("matched").textContent = `${d.matched} match`;
  $("gap").textContent = `(one per run of flagged frames of a source: at most ${d.gap.frames} normal frames and ` +
    `${d.gap.seconds} s between two flagged ones)`;
  const select = $("f-source"), chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const s of d.sources) { const o = el("option", "", s); o.value = s; select.appendChild(o); }
  select.value = chosen;
  drawEpisodes(writable); drawHistory(); drawVersions(writable);
}

function drawEpisodes(writable) {
  const box = $("episodes"); box.textContent = "";
  if (!data.episodes.length) box.appendChild(el("div", "k", "no episodes match these filters"));
  for (const ep of data.episodes) {
    const card = el("div", "episode " + ep.verdict + (picked === ep.id ? " picked" : "")); card.dataset.id = ep.id;
    const pic = el("div", "pic");
    if (ep.picture) { const img = el("img"); img.alt = `best frame of episode ${ep.id}`; img.src = `review/picture/${ep.id}.jpg`; pic.appendChild(img); }
    else pic.appendChild(el("div", "none", ep.original ? "original only" : "picture not kept"));
    pic.addEventListener("click", () => openViewer(ep)); card.appendChild(pic);
    const h = el("h4", "", ep.source); h.appendChild(el("span", "verdict " + ep.verdict, ep.verdict === "new" ? "not reviewed" : ep.verdict)); card.appendChild(h);
    const b = ep.best || {};
    card.appendChild(el("div", "meta", `${when(ep.start)} – ${clock(ep.end)} · ${ep.frames} flagged frame(s)` + (ep.open ? " · still open" : "") + (ep.this_run ? "" : " · earlier run")));
    const m = el("div", "meta"); m.appendChild(el("span", "score", `best ${fmt(b.score, 4)}`));
    m.appendChild(document.createTextNode(` / threshold ${fmt(b.threshold, 4)} · frame ${b.frame}` + (b.version ? ` · v${b.version}` : "")));
    card.appendChild(m);
    if (ep.review) card.appendChild(el("div", "meta", `acknowledged by ${ep.review.who} at ${when(ep.review.time)}` + (ep.review.note ? ` (${ep.review.note})` : "")));
    for (const l of ep.labels) card.appendChild(el("div", "meta", `labelled ${l.kind} by ${l.who} at ${when(l.time)}: ${l.file}`));
    const actions = el("div", "actions"), result = resultFor("episode-" + ep.id);
    const ack = el("button", "ack secondary", ep.review ? "acknowledged" : "Acknowledge");
    ack.disabled = !writable || !!ep.review;
    ack.addEventListener("click", async () => {
      if (!await confirmThen(`Acknowledge episode ${ep.id} (${ep.source}, ${ep.frames} flagged frame(s) from ${clock(ep.start)})? Your name and the time are recorded.`)) return;
      const r = await write("api/review/ack", {episode: ep.id}, result);
      if (r) { tell(result, `acknowledged by ${r.episode.review.who}`, "ok"); setTimeout(() => refresh(true), 600); }
    });
    const labelled = ep.labels.length > 0, canLabel = writable && ep.original && !labelled && data.labels_to;
    const why = !data.labels_to ? "labels need a run with --profile" : !ep.original ? "its original pixels are no longer kept" : labelled ? "labelled already" : "";
    const good = el("button", "good ok", "This part is good"); good.disabled = !canLabel; good.title = why || `save its original into ${data.labels_to}/good`;
    const kind = el("input", "kind"); kind.placeholder = "defect kind"; kind.value = kinds[ep.id] || "defect";
    kind.addEventListener("input", () => { kinds[ep.id] = kind.value; }); kind.setAttribute("aria-label", "defect kind"); kind.disabled = !canLabel;
    const defect = el("button", "defect bad", "This is a defect"); defect.disabled = !canLabel; defect.title = why || `save its original into ${data.labels_to}/<kind>`;
    const label = async (what, kindName) => {
      const where = what === "good" ? "good" : kindName;
      if (!await confirmThen(`Label the best frame of episode ${ep.id} (frame ${b.frame}, score ${fmt(b.score, 4)}) as ${what === "good" ? "a good part" : "a defect: " + kindName}? Its original pixels are saved into ${data.labels_to}/${where}/ for winclip-calibrate --labelled and winclip-eval.`)) return;
      const r = await write("api/review/label", {episode: ep.id, label: what, kind: kindName}, result);
      if (r) { const l = r.episode.labels[r.episode.labels.length - 1]; tell(result, `saved as ${l.kind}: ${l.file}`, "ok"); setTimeout(() => refresh(true), 600); }
    };
    good.addEventListener("click", () => label("good", "good"));
    defect.addEventListener("click", () => label("defect", kind.value.trim() || "defect"));
    actions.append(ack, good, kind, defect, result); card.appendChild(actions);
    box.appendChild(card);
  }
}

function historyRows() {
  const rows = [], h = data.history;
  for (const l of h.versions) rows.push({t: Date.parse(l.time) / 1000, what: l.action, where: `version ${l.from} → ${l.to}`, who: `${l.who}${l.why ? ": " + l.why : ""}`, kind: "version"});
  for (const d of h.drift) rows.push({t: d.start, end: d.end, what: "drift", where: d.source, who: `${d.direction || ""} KS ${fmt(d.distance, 2)}` + (!d.end ? ", still drifting" : d.ended_with_run ? `, until the run stopped at ${clock(d.end)}` : `, cleared ${clock(d.end)}`), kind: "drift"});
  for (const o of h.outages) rows.push({t: o.start, end: o.end, what: "outage", where: o.source, who: (!o.end ? "still down" : o.ended_with_run ? `down until the run stopped at ${clock(o.end)}` : `back at ${clock(o.end)} (${fmt(o.end - o.start, 0)} s)`) + (o.detail ? " · " + o.detail : ""), kind: "outage"});
  return rows.sort((a, b) => b.t - a.t);
}
function drawHistory() {
  const body = $("history").tBodies[0]; body.textContent = "";
  const rows = historyRows();
  if (!rows.length) { const tr = el("tr"); const td = el("td", "k", "nothing yet"); td.colSpan = 4; tr.appendChild(td); body.appendChild(tr); }
  for (const r of rows.slice(0, 200)) {
    const tr = el("tr", r.kind); tr.append(el("td", "", when(r.t)), el("td", "", r.what), el("td", "", r.where), el("td", "hide-narrow", r.who));
    body.appendChild(tr);
  }
}

function drawVersions(writable) {
  const body = $("versions").tBodies[0]; body.textContent = "";
  const p = data.profile && data.profile.versions ? data.profile : {versions: []};
  if (!p.versions.length) { const tr = el("tr"); const td = el("td", "k", (data.profile || {}).error ? `the profile's versions cannot be read: ${data.profile.error}` : "this run's profile keeps no versions (or there is none)"); td.colSpan = 4; tr.appendChild(td); body.appendChild(tr); }
  const using = p.in_use !== undefined ? p.in_use : p.current;
  const current = p.versions.find(x => x.version === using) || {};
  for (const v of p.versions) {
    const tr = el("tr", v.version === using ? "current" : ""); tr.dataset.version = v.version;
    tr.appendChild(el("td", "", `v${v.version}` + (v.version === using ? " (in use)" : "") + (v.pruned ? " (removed)" : "")));
    tr.appendChild(el("td", "", `${v.action} by ${v.who}` + (v.created ? ` · ${v.created.replace("T", " ").slice(0, 19)}` : "") + (v.why ? ` · ${v.why}` : "")));
    const th = v.thresholds || {};
    tr.appendChild(el("td", "hide-narrow", `image ${fmt(th.image, 4)} · pixel ${fmt(th.pixel, 4)}`));
    const cell = el("td"), result = resultFor("version-" + v.version);
    if (v.version !== using) {
      const b = el("button", "use secondary", `Use version ${v.version}`);
      b.disabled = !writable || !!v.pruned;
      b.addEventListener("click", async () => {
        const from = current.thresholds || {};
        if (!await confirmThen(`Use version ${v.version} (${v.action} by ${v.who}) instead of version ${using}? ` +
          `Image threshold ${fmt(from.image, 4)} → ${fmt(th.image, 4)}, pixel ${fmt(from.pixel, 4)} → ${fmt(th.pixel, 4)}. ` +
          `The line switches between two frames; the choice is recorded as a new change (nothing is deleted).`)) return;
        b.disabled = true;
        const r = await write("api/version", {version: v.version}, result);
        if (!r) { b.disabled = false; return; }
        tell(result, `switching to version ${v.version}: ${r.job.state}`, "ok"); watchJob(r.job.id, result);
      });
      cell.appendChild(b);
    }
    cell.appendChild(result); tr.appendChild(cell); body.appendChild(tr);
  }
}
function watchJob(id, result) {
  const check = async () => {
    let s; try { s = await (await fetch("status.json", {cache: "no-store"})).json(); } catch (e) { setTimeout(check, 1000); return; }
    const job = ((s.operator || {}).jobs || []).find(j => j.id === id);
    if (job && (job.state === "applied" || job.state === "failed")) {
      tell(result, job.state === "applied" ? `version ${job.version} in use` : `failed: ${job.detail}`, job.state === "applied" ? "ok" : "err");
      refresh(true); return;
    }
    setTimeout(check, 500);
  };
  check();
}

function drawTimeline() {
  const svg = $("timeline"), NS = "http://www.w3.org/2000/svg", W = Math.max(300, svg.clientWidth || 600), H = 112, L = 58, R = 8;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const add = (tag, attrs, text) => { const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; };
  const params = new URLSearchParams(query()), rows = historyRows();
  const now = data.now, starts = data.episodes.map(e => e.start).concat(rows.map(r => r.t)).filter(Boolean);
  // from the first thing within the filters (not the whole chosen range), so a short run is not one thin line
  const first = Math.min(now - 60, ...starts), t1 = Number(params.get("until")) || now;
  const since = params.get("within") ? now - Number(params.get("within")) : Number(params.get("since")) || 0;
  let t0 = Math.max(since, first);
  t0 -= (t1 - t0) * 0.03;
  if (t1 <= t0) t0 = t1 - 60;
  const x = t => L + (W - L - R) * Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
  const lanes = [["episodes", 18], ["versions", 46], ["drift", 64], ["outages", 82]];
  for (const [name, y] of lanes) { add("text", {x: 2, y: y + 4}, name); add("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#222"}); }
  add("text", {x: L, y: H - 3}, when(t0)); add("text", {x: W - R - 110, y: H - 3}, t1 >= now - 1 ? "now" : when(t1));
  const colour = {new: "#ff5c5c", acknowledged: "#7fb2ff", good: "#5fd35f", defect: "#ffbf3c"};
  for (const ep of data.episodes) {
    const r = add("rect", {x: x(ep.start) - 1, y: 8, width: Math.max(3, x(ep.end) - x(ep.start) + 2), height: 20, fill: colour[ep.verdict], class: "mark", "data-id": ep.id});
    r.style.cursor = "pointer"; r.addEventListener("click", () => pick(ep.id));
    r.appendChild(document.createElementNS(NS, "title")).textContent = `${ep.source} ${clock(ep.start)} best ${fmt((ep.best || {}).score, 4)}`;
  }
  for (const r of rows) {
    if (r.kind === "version") add("path", {d: `M${x(r.t)} 40 l6 6 l-6 6 l-6 -6 z`, fill: "#7fb2ff"});
    else add("rect", {x: x(r.t), y: r.kind === "drift" ? 60 : 78, width: Math.max(3, x(r.end || now) - x(r.t)), height: 8, fill: r.kind === "drift" ? "#ff8c3c" : "#888"});
  }
}
function pick(id) {
  picked = id; const card = document.querySelector(`.episode[data-id="${id}"]`);
  document.querySelectorAll(".episode.picked").forEach(c => c.classList.remove("picked"));
  if (card) { card.classList.add("picked"); card.scrollIntoView({block: "center"}); }
}

// the full-screen viewer: heat map or original, zoom with buttons or the wheel, pan by dragging
const view = {scale: 1, x: 0, y: 0, ep: null, kind: "heat"};
function place() { $("v-img").style.transform = `translate(${view.x}px,${view.y}px) scale(${view.scale})`; $("v-zoom").textContent = Math.round(view.scale * 100) + "%"; }
function fit() {
  const img = $("v-img"), stage = $("v-stage");
  if (!img.naturalWidth) return;
  view.scale = Math.min(stage.clientWidth / img.naturalWidth, stage.clientHeight / img.naturalHeight);
  view.x = (stage.clientWidth - img.naturalWidth * view.scale) / 2; view.y = (stage.clientHeight - img.naturalHeight * view.scale) / 2; place();
}
function zoom(factor, cx, cy) {
  const stage = $("v-stage"); cx = cx === undefined ? stage.clientWidth / 2 : cx; cy = cy === undefined ? stage.clientHeight / 2 : cy;
  const next = Math.min(16, Math.max(0.05, view.scale * factor));
  view.x = cx - (cx - view.x) * next / view.scale; view.y = cy - (cy - view.y) * next / view.scale; view.scale = next; place();
}
function show(kind) {
  const ep = view.ep; view.kind = kind;
  $("v-heat").classList.toggle("on", kind === "heat"); $("v-orig").classList.toggle("on", kind === "orig");
  $("v-heat").disabled = !ep.picture; $("v-orig").disabled = !ep.original;
  const img = $("v-img"); img.onload = fit;
  img.alt = (kind === "heat" ? "heat map" : "original") + ` of episode ${ep.id}`;
  img.src = (kind === "heat" ? "review/picture/" : "review/original/") + ep.id + ".jpg";
}
function openViewer(ep) {
  view.ep = ep; $("v-title").textContent = `${ep.source} · episode ${ep.id} · frame ${(ep.best || {}).frame} · score ${fmt((ep.best || {}).score, 4)}`;
  $("viewer").classList.add("open"); show(ep.picture ? "heat" : "orig");
}
$("v-heat").onclick = () => show("heat"); $("v-orig").onclick = () => show("orig");
$("v-in").onclick = () => zoom(1.5); $("v-out").onclick = () => zoom(1 / 1.5); $("v-fit").onclick = fit;
$("v-close").onclick = () => $("viewer").classList.remove("open");
document.addEventListener("keydown", e => { if (e.key === "Escape") $("viewer").classList.remove("open"); });
$("v-stage").addEventListener("wheel", e => { e.preventDefault(); const r = $("v-stage").getBoundingClientRect();
  zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top); }, {passive: false});
let drag = null;
$("v-stage").addEventListener("pointerdown", e => { drag = {x: e.clientX - view.x, y: e.clientY - view.y}; $("v-stage").setPointerCapture(e.pointerId); });
$("v-stage").addEventListener("pointermove", e => { if (drag) { view.x = e.clientX - drag.x; view.y = e.clientY - drag.y; place(); } });
$("v-stage").addEventListener("pointerup", () => { drag = null; });
window.addEventListener("resize", () => { if (data) drawTimeline(); });
refresh(true);
setInterval(refresh, 3000);
</script></body></html>
"""
