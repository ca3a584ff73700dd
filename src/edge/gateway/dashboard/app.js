// vsm dashboard: one small module, no framework, no build step. Data comes from the /v1 API
// (the session cookie stands for the key); changes arrive over /v1/events and update only the
// piece they concern. Text is always set with textContent, never parsed as HTML.

const $ = (sel) => document.querySelector(sel);
const STATES = ["available", "scheduled", "executing", "retryable", "completed", "discarded", "cancelled"];
const MAX_FEED = 200;

let session = null;
let stream = null;

// ---- HTTP ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = session ? session.csrf_token : "";
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && session) { signedOut(); }
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = new Error(data && data.error ? data.error.message : res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const when = (t) => (t ? new Date(t).toLocaleString() : "never");

// A refresh that runs at most once per `ms`, trailing: a burst of job events costs one request.
function throttled(fn, ms) {
  let timer = null, again = false;
  return () => {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(() => { timer = null; if (again) { again = false; fn(); } }, ms);
  };
}

// ---- Sign-in ------------------------------------------------------------------------------

async function start() {
  try {
    session = await api("GET", "/dashboard/session");
  } catch {
    session = null;
  }
  if (session) showApp(); else showSignIn();
}

function showSignIn() {
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#who").textContent = "";
  $("#live").textContent = "";
  $("#signin").hidden = false;
  $("#credential").focus();
}

function signedOut() {
  session = null;
  if (stream) { stream.close(); stream = null; }
  showSignIn();
}

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#credential");
  $("#signin-error").textContent = "";
  try {
    session = await api("POST", "/dashboard/sign-in", { credential: input.value });
    input.value = "";
    showApp();
  } catch (err) {
    $("#signin-error").textContent = err.status === 401 ? "Wrong key or token." : err.message;
  }
});

$("#sign-out").addEventListener("click", async () => {
  try { await api("POST", "/dashboard/sign-out"); } catch { /* signed out either way */ }
  signedOut();
});

// ---- Views --------------------------------------------------------------------------------

const tenantViews = ["systems", "queues", "jobs", "notifications", "events", "health"];
const operatorViews = ["queues", "health"];

function views() { return session && session.kind === "operator" ? operatorViews : tenantViews; }

function route() {
  const wanted = location.hash.slice(1);
  const view = views().includes(wanted) ? wanted : views()[0];
  for (const v of tenantViews) {
    $(`#view-${v}`).hidden = v !== view;
    const link = document.querySelector(`.tabs a[data-view="${v}"]`);
    link.hidden = !views().includes(v);
    if (v === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
}
window.addEventListener("hashchange", route);

function showApp() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = session.kind === "operator" ? "Operator (all tenants)" : `Tenant ${session.tenant_id}`;
  route();
  loadQueues();
  loadHealth();
  if (session.kind === "tenant") {
    loadSystems();
    loadJobs();
    loadNotifications();
    connect();
  } else {
    $("#live").textContent = "";
  }
}

// S1–S5 tiles: one element per system, updated in place.
function tile(n) {
  let t = document.getElementById(`system-${n}`);
  if (!t) {
    t = el("article", { class: "tile", id: `system-${n}`, "aria-labelledby": `system-${n}-title` },
      el("h3", { id: `system-${n}-title` }), el("div", { class: "meta" }), el("pre"));
    $("#systems").append(t);
  }
  return t;
}

function renderSystem(s) {
  const t = tile(s.system);
  t.querySelector("h3").textContent = `S${s.system} ${s.name || ""}`.trim();
  t.querySelector(".meta").textContent = `version ${s.version} · changed ${when(s.updated_at)}`;
  t.querySelector("pre").textContent = JSON.stringify(s.state, null, 1);
  t.dataset.version = s.version;
}

async function loadSystems() {
  const list = await api("GET", "/v1/systems");
  for (const s of list.items) renderSystem(s);
}

function onSystemState(p) {
  const t = tile(p.system);
  const name = (t.querySelector("h3").textContent.split(" ").slice(1).join(" ")) || "";
  if (Number(t.dataset.version || 0) > p.version) return; // an older event replayed
  renderSystem({ system: p.system, name, version: p.version, state: p.state, updated_at: new Date().toISOString() });
  t.classList.remove("flash"); void t.offsetWidth; t.classList.add("flash");
}

// Queues: counts per state, concurrency, paused; pause/resume for the operator.
async function loadQueues() {
  const list = await api("GET", "/v1/queues");
  const body = $("#queues tbody");
  body.replaceChildren(...list.items.map((q) => {
    const action = session.kind === "operator"
      ? el("button", { type: "button", class: "secondary", "data-queue": q.name,
          text: q.paused ? "Resume" : "Pause",
          onclick: () => pauseOrResume(q.name, q.paused ? "resume" : "pause") })
      : el("span");
    return el("tr", { "data-queue": q.name },
      el("th", { scope: "row", text: q.name }),
      el("td", { text: String(q.concurrency) }),
      ...STATES.map((s) => el("td", { text: String(q.counts[s] ?? 0) })),
      el("td", { class: q.paused ? "state-paused" : "state-ok", text: q.paused ? "paused" : "running" }),
      el("td", {}, action));
  }));
  if (!list.items.length) body.append(el("tr", {}, el("td", { colspan: "11", class: "empty", text: "No queues." })));
}

async function pauseOrResume(name, action) {
  try {
    await api("POST", `/v1/queues/${encodeURIComponent(name)}/${action}`);
  } catch (err) {
    alert(err.message);
  }
  await loadQueues();
}

// Jobs, filtered by queue, state and worker, with their attempts and last error.
function jobFilter() {
  const f = new FormData($("#job-filter"));
  return { queue: f.get("queue").trim(), state: f.get("state"), worker: f.get("worker").trim() };
}

async function loadJobs() {
  const { queue, state, worker } = jobFilter();
  const q = new URLSearchParams({ limit: "100" });
  if (queue) q.set("queue", queue);
  if (state) q.set("state", state);
  if (worker) q.set("worker", worker);
  const list = await api("GET", `/v1/jobs?${q}`);
  const body = $("#jobs tbody");
  body.replaceChildren(...list.items.map(jobRow));
  if (!list.items.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "empty", text: "No jobs match." })));
}

function jobRow(j) {
  const errors = Array.isArray(j.errors) ? j.errors : [];
  const last = errors.length ? errors[errors.length - 1] : null;
  const canRetry = !["executing", "available"].includes(j.state);
  const canCancel = !["completed", "discarded", "cancelled"].includes(j.state);
  return el("tr", { "data-job": j.id },
    el("td", { text: j.worker }),
    el("td", { text: j.queue }),
    el("td", { class: `state-${j.state}`, text: j.state }),
    el("td", { text: `${j.attempt}/${j.max_attempts}` }),
    el("td", { class: "err", text: last ? `#${last.attempt}: ${last.error}` : "" }),
    el("td", { text: when(j.inserted_at) }),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "secondary", text: "Retry", disabled: canRetry ? null : "",
        "aria-label": `Retry job ${j.id}`, onclick: () => jobAction(j.id, "retry") }),
      " ",
      el("button", { type: "button", class: "secondary", text: "Cancel",
        disabled: canCancel ? null : "",
        "aria-label": `Cancel job ${j.id}`, onclick: () => jobAction(j.id, "cancel") })));
}

async function jobAction(id, action) {
  try {
    await api("POST", `/v1/jobs/${id}/${action}`);
  } catch (err) {
    alert(err.message);
  }
  refreshJobs();
}

$("#job-filter").addEventListener("submit", (e) => { e.preventDefault(); loadJobs(); });

// Notifications: the delivery log (GET /v1/notifications: attempt_count, last_error, and the
// attempts themselves). Only a failed one can be sent again (the API answers 409 otherwise).
async function retryNotification(id) {
  try { await api("POST", `/v1/notifications/${id}/retry`); } catch (err) { alert(err.message); }
  refreshNotifications();
}

async function loadNotifications() {
  const box = $("#notifications");
  try {
    const list = await api("GET", "/v1/notifications?limit=100");
    const rows = list.items.map((n) => {
      const last = n.attempts.length ? n.attempts[n.attempts.length - 1] : null;
      const error = n.last_error ?? (last && last.error) ?? "";
      return el("tr", { "data-notification": n.id },
        el("td", { text: n.channel }), el("td", { text: n.recipient }),
        el("td", { class: `state-${n.state}`, text: n.state }),
        el("td", { text: String(n.attempt_count) }),
        el("td", { text: last && last.status_code !== null ? String(last.status_code) : "" }),
        el("td", { class: "err", text: error }), el("td", { text: when(n.created_at) }),
        el("td", {}, n.state === "failed"
          ? el("button", { type: "button", class: "secondary", text: "Retry",
              "aria-label": `Retry notification ${n.id}`, onclick: () => retryNotification(n.id) })
          : ""));
    });
    box.replaceChildren(rows.length
      ? el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {},
          ...["Channel", "To", "State", "Attempts", "Status", "Last error", "Created", ""]
            .map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, ...rows)))
      : el("p", { class: "empty", text: "No notifications yet." }));
  } catch (err) {
    box.replaceChildren(el("p", { class: "empty", text: `Could not load notifications: ${err.message}` }));
  }
}

// Platform health: /ready checks and the last health_check run.
async function loadHealth() {
  const h = await api("GET", "/dashboard/health");
  const box = $("#health");
  const checkTile = (title, status, checks, extra) => el("article", { class: "tile" },
    el("h3", { text: title }),
    el("div", { class: `meta state-${status}`, text: `${status}${extra ? " · " + extra : ""}` }),
    el("pre", { text: Object.entries(checks || {}).map(([k, v]) =>
      `${k}: ${v.status}${v.latency_ms !== undefined ? ` (${v.latency_ms} ms)` : ""}${v.error ? " " + v.error : ""}`).join("\n") }));
  box.replaceChildren(
    checkTile("Readiness (/ready)", h.ready.status, h.ready.checks, "this instance"),
    h.last_check
      ? checkTile("Last health check", h.last_check.status, h.last_check.checks, when(h.last_check.checked_at))
      : el("article", { class: "tile" }, el("h3", { text: "Last health check" }), el("p", { class: "empty", text: "None recorded yet." })));
}

// ---- Live ---------------------------------------------------------------------------------

const refreshQueues = throttled(() => loadQueues().catch(() => {}), 1000);
const refreshJobs = throttled(() => loadJobs().catch(() => {}), 1000);
const refreshNotifications = throttled(() => loadNotifications().catch(() => {}), 1000);
const refreshHealth = throttled(() => loadHealth().catch(() => {}), 1000);

function feed(topic, id, data) {
  const list = $("#events");
  list.prepend(el("li", {}, el("span", { text: `#${id}` }), el("strong", { text: topic }), el("code", { text: data })));
  while (list.children.length > MAX_FEED) list.lastElementChild.remove();
}

const TOPICS = ["system.state", "system.health", "episode.created", "episode.analyzed", "episode.failed",
  "policy.created", "policy.updated", "policy.deleted", "policy.triggered", "artifact.stored",
  "artifact.processed", "artifact.deleted", "job.completed", "job.discarded", "notification.sent",
  "notification.failed", "telegram.command"];

function connect() {
  if (stream) stream.close();
  stream = new EventSource("/v1/events", { withCredentials: true });
  stream.addEventListener("connected", () => { $("#live").textContent = "● live"; });
  stream.addEventListener("error", async () => {
    $("#live").textContent = "○ reconnecting";
    if (stream && stream.readyState === EventSource.CLOSED) {
      // The server refused the stream: signed out (401) or too many streams (429).
      try { await api("GET", "/dashboard/session"); setTimeout(connect, 5000); } catch { signedOut(); }
    }
  });
  stream.addEventListener("disconnected", () => { $("#live").textContent = "○ reconnecting"; });
  for (const topic of TOPICS) {
    stream.addEventListener(topic, (e) => {
      feed(topic, e.lastEventId, e.data);
      let p = {};
      try { p = JSON.parse(e.data); } catch { return; }
      if (topic === "system.state") onSystemState(p);
      // A job's end, or an episode (whose analysis job was just inserted or ended).
      else if (topic.startsWith("job.") || topic.startsWith("episode.")) { refreshQueues(); refreshJobs(); }
      else if (topic.startsWith("notification.")) refreshNotifications();
      else if (topic === "system.health") refreshHealth();
    });
  }
}

start();
