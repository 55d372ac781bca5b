// ferry dashboard: a small single-page app over /dashboard/api/*. Text from the cluster is only
// ever set as text (never parsed as HTML). Live updates come as server-sent events; the view on
// screen is reloaded when a kind it shows changed.
"use strict";

const state = { csrf: "", user: "", route: "", kinds: [], timer: null, busy: false, console: null, vnc: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (Math.round(b * 10) / 10) + " " + units[i];
}

// A bar of `used` out of `total`; allocation bars turn amber and red when nearly full,
// progress bars (`progress` true) do not.
function bar(used, total, label, progress) {
  const share = total > 0 ? Math.min(used / total, 1) : 0;
  const cls = progress ? "bar" : share >= 0.95 ? "bar full" : share >= 0.8 ? "bar high" : "bar";
  const fill = el("span");
  fill.style.width = (share * 100).toFixed(1) + "%";
  return el("span", {}, el("span", { class: cls, title: Math.round(share * 100) + "%" }, fill),
    el("span", { class: "barlabel" }, label));
}

function badge(text, good, bad) {
  if (!text) return el("span", { class: "muted" }, "–");
  const cls = good.includes(text) ? "badge ok" : bad.includes(text) ? "badge bad" : "badge warn";
  return el("span", { class: cls }, text);
}

const phaseBadge = (p) => badge(p, ["Running"], ["Failed", "Unknown"]);
const hostBadge = (s) => badge(s, ["Ready"], ["Unreachable", "Misconfigured"]);
const verdictBadge = (v) => badge(v, ["Healthy", "Recovered"], ["Failed", "Fencing", "Fenced", "Degraded"]);

function time(t) {
  if (!t) return "–";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

async function api(path, options) {
  const r = await fetch("/dashboard/api/" + path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (r.status === 401) { location.href = "/dashboard/login"; throw new Error("logged out"); }
  let body = {};
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw Object.assign(new Error(body.error || r.statusText), { status: r.status });
  return body;
}

async function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "x-ferry-csrf": state.csrf, "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

function notice(text, bad) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = bad ? "notice bad" : "notice";
  n.hidden = !text;
}

// Shows `nodes` (elements, or arrays of them at any depth) as the page.
function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function link(href, text) { return el("a", { href }, text); }

// --- views -----------------------------------------------------------------------------------

async function overview() {
  const o = await api("overview");
  const rows = o.pools.map((p) => el("tr", { class: "pool-row", "data-name": p.name },
    el("td", {}, link(`#/pool/${enc(p.namespace)}/${enc(p.name)}`, p.name)),
    el("td", {}, p.namespace),
    el("td", {}, `${p.readyHosts ?? 0} / ${p.selectedHosts ?? 0}`),
    el("td", {}, bar(p.cpus.allocated, p.cpus.allocatable, `${p.cpus.allocated} / ${p.cpus.allocatable} CPUs`)),
    el("td", {}, bar(p.memoryBytes.allocated, p.memoryBytes.allocatable,
      `${bytes(p.memoryBytes.allocated)} / ${bytes(p.memoryBytes.allocatable)}`)),
    el("td", {}, link(`#/vms?namespace=${enc(p.namespace)}&pool=${enc(p.name)}`, String(p.vms))),
    el("td", {}, conditionText(p.conditions, "Ready"))));
  return [
    el("h1", {}, "Host pools"),
    o.pools.length ? table(["Pool", "Namespace", "Ready hosts", "CPU", "Memory", "VMs", "Ready"], rows)
      : el("p", { class: "muted", id: "no-pools" }, "No host pools you may list."),
    el("p", { class: "muted" }, `${o.vms} virtual machines visible to you in ${o.vmNamespaces.length} namespace(s).`),
  ];
}

function conditionText(conditions, type) {
  const c = (conditions || []).find((c) => c.type === type);
  if (!c) return el("span", { class: "muted" }, "–");
  return el("span", { title: c.message || "" }, badge(c.status, ["True"], ["False"]), " ", c.reason || "");
}

function table(headings, rows, id) {
  return el("table", { id }, el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

const enc = encodeURIComponent;

async function poolView(ns, name) {
  const p = await api(`pools/${enc(ns)}/${enc(name)}`);
  const rows = p.hosts.map((h) => {
    const cap = h.allocatable || h.capacity;
    const used = h.allocated || { cpus: 0, memoryBytes: 0 };
    return el("tr", { class: "host-row", "data-name": h.name },
      el("td", {}, link(`#/vms?namespace=${enc(ns)}&pool=${enc(name)}&host=${enc(h.name)}`, h.name)),
      el("td", {}, hostBadge(h.state), h.message ? el("div", { class: "small" }, h.message) : null),
      el("td", { class: "verdict" }, verdictBadge(h.haVerdict)),
      el("td", {}, cap ? bar(used.cpus, cap.cpus, `${used.cpus} / ${cap.cpus}`) : "–"),
      el("td", {}, cap ? bar(used.memoryBytes || 0, cap.memoryBytes || 0,
        `${bytes(used.memoryBytes || 0)} / ${bytes(cap.memoryBytes)}`) : "–"),
      el("td", {}, h.vmCount ?? "–"),
      el("td", { class: "versions" }, `libvirt ${h.libvirtVersion || "?"}, QEMU ${h.hypervisorVersion || "?"}`),
      el("td", {}, time(h.lastContact)));
  });
  return [
    el("h1", {}, `Pool ${p.name}`, el("span", { class: "muted" }, ` (${p.namespace})`)),
    el("p", {}, `${p.readyHosts ?? 0} of ${p.selectedHosts ?? 0} hosts ready. `, conditionText(p.conditions, "Ready")),
    table(["Host", "State", "HA verdict", "CPU allocated", "Memory allocated", "VMs", "Versions", "Last contact"], rows, "hosts"),
  ];
}

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

async function vmList() {
  const q = params();
  const page = await api("vms?" + q.toString());
  const input = (name, placeholder) => el("input", { name, placeholder, value: q.get(name) || "" });
  const form = el("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const f = new URLSearchParams(new FormData(e.target));
    for (const [k, v] of [...f.entries()]) if (!v) f.delete(k);
    location.hash = "#/vms?" + f.toString();
  } }, input("q", "name contains"), input("namespace", "namespace"), input("pool", "pool"),
  input("host", "host"), input("phase", "phase"), el("button", { type: "submit" }, "Filter"));
  const rows = page.items.map((v) => el("tr", { class: "vm-row", "data-name": v.name },
    el("td", {}, link(`#/vm/${enc(v.namespace)}/${enc(v.name)}`, v.name)),
    el("td", {}, v.namespace),
    el("td", { class: "phase" }, phaseBadge(v.phase)),
    el("td", {}, v.host || "–"),
    el("td", {}, v.ip || "–"),
    el("td", {}, v.ready ? el("span", { title: v.ready.message || "" }, v.ready.reason || v.ready.status) : "–"),
    el("td", {}, v.pool)));
  const go = (n) => { q.set("page", n); location.hash = "#/vms?" + q.toString(); };
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", disabled: page.page <= 1, onclick: () => go(page.page - 1) }, "‹ Previous"),
    el("span", { id: "page-info" }, `page ${page.page} of ${page.pages} · ${page.total} VMs`),
    el("button", { type: "button", disabled: page.page >= page.pages, onclick: () => go(page.page + 1) }, "Next ›"));
  return [el("h1", {}, "Virtual machines"), form,
    table(["Name", "Namespace", "Phase", "Host", "IP", "Ready", "Pool"], rows, "vms"), pager];
}

async function vmView(ns, name) {
  const d = await api(`vms/${enc(ns)}/${enc(name)}`);
  const v = d.vm;
  const act = (action, label, extra) => d.actions[action]
    ? el("button", { type: "button", id: "action-" + action, onclick: () => run(action, extra) }, label) : null;
  const target = el("input", { id: "migrate-target", placeholder: "target host (optional)" });
  const run = async (action) => {
    try {
      const body = action === "migrate" ? { targetHost: target.value } : {};
      const r = await post(`vms/${enc(ns)}/${enc(name)}/${action}`, body);
      notice(r.message, false);
    } catch (e) {
      notice(`${action}: ${e.message}`, true);
    }
  };
  const serial = d.actions.console
    ? el("button", { type: "button", id: "action-console", onclick: () => openConsole(ns, name) }, "Serial console") : null;
  const vnc = d.actions.vnc
    ? el("button", { type: "button", id: "action-vnc", onclick: () => openVnc(ns, name) }, "VNC console") : null;
  const buttons = [act("start", "Start"), act("stop", "Stop"), act("restart", "Restart"), serial, vnc].filter(Boolean);
  const migrate = d.actions.migrate ? [target, act("migrate", "Migrate")] : [];
  const actions = buttons.length || migrate.length
    ? el("div", { class: "actions", id: "actions" }, buttons, migrate)
    : el("p", { class: "muted", id: "no-actions" }, "You may look at this VM but not change it.");
  const conds = d.conditions.map((c) => el("tr", {},
    el("td", {}, c.type), el("td", {}, badge(c.status, ["True"], [])), el("td", {}, c.reason || ""),
    el("td", {}, c.message || ""), el("td", {}, time(c.lastTransitionTime))));
  const events = d.events.map((e) => el("tr", {},
    el("td", {}, time(e.time)), el("td", {}, e.type || ""), el("td", {}, e.reason || ""),
    el("td", {}, e.message || ""), el("td", {}, e.count ?? "")));
  const moves = d.migrations.map(migrationRow);
  return [
    el("h1", {}, v.name, el("span", { class: "muted" }, ` (${v.namespace})`)),
    actions,
    el("dl", { class: "facts" },
      el("dt", {}, "Phase"), el("dd", { id: "vm-phase" }, v.phase || "–"),
      el("dt", {}, "Host"), el("dd", { id: "vm-host" }, v.host || "–"),
      el("dt", {}, "IP"), el("dd", {}, v.ip || "–"),
      el("dt", {}, "Pool"), el("dd", {}, v.pool),
      el("dt", {}, "Run strategy"), el("dd", {}, v.runStrategy),
      el("dt", {}, "Size"), el("dd", {}, v.cpus ? `${v.cpus} CPU, ${v.memory}` : "–")),
    el("h2", {}, "Conditions"),
    table(["Type", "Status", "Reason", "Message", "Since"], conds, "conditions"),
    el("h2", {}, "Migrations"),
    moves.length ? migrationTable(moves) : el("p", { class: "muted" }, "None."),
    el("h2", {}, "Recent events"),
    d.eventsError ? el("p", { class: "error" }, d.eventsError) : null,
    events.length ? table(["Time", "Type", "Reason", "Message", "Count"], events, "events") : el("p", { class: "muted" }, "None."),
  ];
}

function migrationRow(m) {
  const p = m.progress;
  return el("tr", { class: "migration-row", "data-name": m.name },
    el("td", {}, link(`#/vm/${enc(m.namespace)}/${enc(m.vm)}`, m.vm)),
    el("td", {}, m.name),
    el("td", {}, badge(m.phase, ["Succeeded"], ["Failed"])),
    el("td", {}, `${m.source || "?"} → ${m.target || m.targetHost || "?"}`),
    el("td", { class: "progress" }, p === null || p === undefined ? "–"
      : bar(p, 1, `${Math.round(p * 100)}% (${bytes(m.transferredBytes)} sent)`, true)),
    el("td", {}, m.downtimeMs === null || m.downtimeMs === undefined ? "–" : `${m.downtimeMs} ms`),
    el("td", {}, time(m.startTime)),
    el("td", {}, m.message || m.reason || ""));
}

function migrationTable(rows, id) {
  return table(["VM", "Migration", "Phase", "Hosts", "Progress", "Downtime", "Started", "Note"], rows, id);
}

async function migrationsView() {
  const m = await api("migrations");
  return [
    el("h1", {}, "Live migrations"),
    el("h2", {}, "Under way"),
    m.active.length ? migrationTable(m.active.map(migrationRow), "active-migrations")
      : el("p", { class: "muted" }, "None."),
    el("h2", {}, "Recent"),
    m.recent.length ? migrationTable(m.recent.map(migrationRow), "recent-migrations")
      : el("p", { class: "muted" }, "None."),
  ];
}

async function incidentsView() {
  const r = await api("incidents");
  const items = r.items.map((i) => el("section", { class: "incident", "data-name": i.incident, "data-host": i.host },
    el("h2", {}, `Host ${i.host}`, el("span", { class: "muted" }, ` · incident ${i.incident} · policy ${i.namespace}/${i.policy}`)),
    el("p", { class: "small incident-summary" }, i.evidence ? badge(i.evidence, ["Fenced", "Confirmed", "ShutOff"], []) : badge("Not proven off", [], ["Not proven off"]),
      ` ${i.restarted} of ${i.vms} VMs restarted`),
    el("ol", { class: "timeline" }, i.timeline.map((s) => el("li", { class: `step-${s.step}`, "data-step": s.step, "data-vm": s.vm, "data-at": s.at },
      el("strong", {}, time(s.at)), " ", el("span", { class: "muted" }, `+${(s.afterSeconds ?? 0).toFixed(0)} s`), " ", s.what))),
    i.waiting.length ? el("p", { class: "small" }, "Waiting: ", i.waiting.map((w) => `${w.vm} (${w.waiting})`).join(", ")) : null));
  return [el("h1", {}, "HA incidents"),
    items.length ? items : el("p", { class: "muted", id: "no-incidents" }, "No incidents in the HA policies you may list.")];
}

// --- serial console (xterm.js over the console proxy's WebSocket) ----------------------------

function closeConsole() {
  const c = state.console;
  state.console = null;
  if (c) {
    try { c.ws.close(); } catch (_) { /* closed */ }
    c.term.dispose();
  }
  document.getElementById("console-pane").hidden = true;
}

function openConsole(ns, name) {
  closeConsole();
  const pane = document.getElementById("console-pane");
  const box = document.getElementById("terminal");
  const status = document.getElementById("console-state");
  box.replaceChildren();
  pane.hidden = false;
  const term = new Terminal({ convertEol: false, cursorBlink: true, rows: 24, cols: 100 });
  term.open(box);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/dashboard/api/vms/${enc(ns)}/${enc(name)}/console`);
  ws.binaryType = "arraybuffer";
  state.console = { ws, term, vm: `${ns}/${name}` };
  status.textContent = `${ns}/${name}: connecting…`;
  ws.addEventListener("open", () => { status.textContent = `${ns}/${name}: connected`; term.focus(); });
  ws.addEventListener("close", () => { status.textContent = `${ns}/${name}: closed`; });
  ws.addEventListener("message", (e) => {
    term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  });
  const encoder = new TextEncoder();
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  pane.scrollIntoView();
}

// --- VNC console (noVNC over the console proxy's WebSocket) -----------------------------------

function closeVnc() {
  const v = state.vnc;
  state.vnc = null;
  if (v && v.rfb) {
    try { v.rfb.disconnect(); } catch (_) { /* gone */ }
  }
  document.getElementById("vnc-pane").hidden = true;
}

async function openVnc(ns, name) {
  closeVnc();
  const pane = document.getElementById("vnc-pane");
  const box = document.getElementById("vnc");
  const status = document.getElementById("vnc-state");
  box.replaceChildren();
  pane.hidden = false;
  status.textContent = `${ns}/${name}: connecting…`;
  const entry = { vm: `${ns}/${name}`, rfb: null };
  state.vnc = entry;
  try {
    const { default: RFB } = await import("/dashboard/assets/novnc/core/rfb.js");
    if (state.vnc !== entry) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/dashboard/api/vms/${enc(ns)}/${enc(name)}/vnc`;
    const rfb = new RFB(box, url, { wsProtocols: ["binary"] });
    entry.rfb = rfb;
    rfb.addEventListener("connect", () => { status.textContent = `${ns}/${name}: connected`; });
    rfb.addEventListener("disconnect", (e) => {
      status.textContent = `${ns}/${name}: ${e.detail.clean ? "closed" : "connection lost"}`;
    });
    rfb.addEventListener("securityfailure", (e) => { status.textContent = `${ns}/${name}: refused (${e.detail.reason || e.detail.status})`; });
    rfb.addEventListener("desktopname", (e) => { pane.dataset.desktop = e.detail.name; });
  } catch (e) {
    status.textContent = `${ns}/${name}: ${e.message}`;
  }
  pane.scrollIntoView();
}

// --- routing and live updates ----------------------------------------------------------------

function route() {
  const h = (location.hash || "#/").slice(1).split("?")[0];
  const parts = h.split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case "pool": return { view: () => poolView(parts[1], parts[2]), kinds: ["pools"] };
    case "vms": return { view: vmList, kinds: ["vms"] };
    case "vm": return { view: () => vmView(parts[1], parts[2]), kinds: ["vms", "migrations"] };
    case "migrations": return { view: migrationsView, kinds: ["migrations"] };
    case "incidents": return { view: incidentsView, kinds: ["incidents"] };
    default: return { view: overview, kinds: ["pools", "vms"] };
  }
}

async function render(keepNotice) {
  const r = route();
  state.kinds = r.kinds;
  if (!keepNotice) notice("");
  state.busy = true;
  try {
    show(await r.view());
  } catch (e) {
    if (e.message !== "logged out") show(el("p", { class: "error" }, e.message));
  } finally {
    state.busy = false;
    document.body.dataset.rendered = String(Date.now());
    // When the first view was drawn, in ms since navigation started (the scale benchmark reads it).
    if (!document.body.dataset.renderedAt) document.body.dataset.renderedAt = String(performance.now());
  }
}

function live() {
  const dot = document.getElementById("live");
  const src = new EventSource("/dashboard/api/changes");
  src.addEventListener("open", () => dot.classList.add("on"));
  src.addEventListener("error", () => dot.classList.remove("on"));
  src.addEventListener("change", (e) => {
    const kinds = e.data.split(",");
    if (!kinds.some((k) => state.kinds.includes(k))) return;
    clearTimeout(state.timer);
    state.timer = setTimeout(() => render(true), 150);
  });
}

async function start() {
  try {
    const o = await api("overview");
    state.csrf = o.csrf;
    state.user = o.user;
    document.getElementById("user").textContent = o.user;
  } catch (e) {
    return;
  }
  document.getElementById("logout").addEventListener("click", async () => {
    try { await post("../logout"); } catch (_) { /* gone already */ }
    location.href = "/dashboard/login";
  });
  document.getElementById("console-close").addEventListener("click", closeConsole);
  document.getElementById("vnc-close").addEventListener("click", closeVnc);
  window.addEventListener("hashchange", () => {
    // A console belongs to its VM's page.
    const c = state.console;
    if (c && !location.hash.startsWith(`#/vm/${c.vm}`)) closeConsole();
    const v = state.vnc;
    if (v && !location.hash.startsWith(`#/vm/${v.vm}`)) closeVnc();
    render(false);
  });
  live();
  render(false);
}

document.addEventListener("DOMContentLoaded", start);
