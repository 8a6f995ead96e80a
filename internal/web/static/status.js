// The live status page: polls /status.json about once a second while the
// tab is visible (never while it is hidden), keeps the last five minutes
// and draws them on small canvases. No library, nothing from elsewhere.

const WINDOW_MS = 5 * 60 * 1000;
const MAX_BACKOFF_MS = 10000;
const TRANSPORTS = ["websocket", "eventsource", "polling"]; // fixed order and colours; others follow
const TRANSPORT_COLOURS = { websocket: "--c-ws", eventsource: "--c-es", polling: "--c-poll" };

const $ = (id) => document.getElementById(id);
const hist = { t: [], in: [], out: [], drops: [], disconnects: [], rejections: [], conns: {} };
let lastT = 0;
let timer = 0;
let backoff = 1000;
let stopped = false; // refused: polling again cannot help
let latest = null;
let period = 1000; // between two samples, as the gateway says
let inflight = false; // one request at a time: two would append the same samples twice

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#667085";
}

function fmtRate(v) {
  if (v === undefined || v === null) return "–";
  if (v === 0) return "0";
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString("en-US");
}

function fmtCount(v) {
  return Math.round(v || 0).toLocaleString("en-US");
}

function fmtDuration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

function setLive(state, text) {
  const p = $("live");
  p.dataset.state = state;
  p.textContent = text;
}

function showProblem(text) {
  const p = $("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

// merge appends the samples after lastT and forgets those past the window.
function merge(series) {
  const n = series.t.length;
  for (const tr of Object.keys(series.connections)) {
    if (!hist.conns[tr]) hist.conns[tr] = new Array(hist.t.length).fill(0);
  }
  for (let i = 0; i < n; i++) {
    if (hist.t.length && series.t[i] <= hist.t[hist.t.length - 1]) continue; // seen already
    hist.t.push(series.t[i]);
    for (const k of ["in", "out", "drops", "disconnects", "rejections"]) hist[k].push(series[k][i]);
    for (const tr of Object.keys(hist.conns)) hist.conns[tr].push((series.connections[tr] || [])[i] || 0);
  }
  if (n > 0) lastT = series.t[n - 1];
  const cut = hist.t.findIndex((t) => t >= lastT - WINDOW_MS);
  if (cut > 0) {
    for (const k of ["t", "in", "out", "drops", "disconnects", "rejections"]) hist[k].splice(0, cut);
    for (const tr of Object.keys(hist.conns)) hist.conns[tr].splice(0, cut);
  }
}

function transportOrder(keys) {
  return [...TRANSPORTS.filter((t) => keys.includes(t)), ...keys.filter((t) => !TRANSPORTS.includes(t)).sort()];
}

// niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// draw plots lines [{values, colour}] against hist.t over the window;
// integer charts (connections) label only whole numbers.
function draw(canvas, lines, integer = false) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (w === 0 || h === 0) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 34, right = 6, top = 6, bottom = 16;
  const pw = w - left - right, ph = h - top - bottom;
  let max = 0;
  for (const l of lines) for (const v of l.values) max = Math.max(max, v);
  max = niceMax(max);
  const end = lastT || Date.now(), start = end - WINDOW_MS;
  const x = (t) => left + ((t - start) / WINDOW_MS) * pw;
  const y = (v) => top + ph - (v / max) * ph;

  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = css("--mute");
  ctx.strokeStyle = css("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    if (integer && !Number.isInteger(v)) continue;
    const gy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, gy);
    ctx.lineTo(w - right, gy);
    ctx.stroke();
    ctx.fillText(integer ? fmtCount(v) : fmtRate(v), left - 4, gy);
  }
  ctx.textBaseline = "alphabetic";
  for (const [i, label] of ["−5m", "−4m", "−3m", "−2m", "−1m", "now"].entries()) {
    ctx.textAlign = i === 0 ? "left" : i === 5 ? "right" : "center";
    ctx.fillText(label, left + (i / 5) * pw, h - 3);
  }
  ctx.lineWidth = 1.75;
  ctx.lineJoin = "round";
  for (const l of lines) {
    ctx.strokeStyle = l.colour;
    ctx.beginPath();
    // A gap (a hidden tab's catch-up past the gateway's memory, a restart)
    // stays a gap rather than a straight line across it.
    hist.t.forEach((t, i) => (i === 0 || t - hist.t[i - 1] > 3 * period
      ? ctx.moveTo(x(t), y(l.values[i])) : ctx.lineTo(x(t), y(l.values[i]))));
    ctx.stroke();
  }
}

function reasonRows(tbody, counts) {
  tbody.replaceChildren();
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  if (entries.length === 0) {
    const td = document.createElement("td");
    td.className = "none";
    td.textContent = "none";
    tbody.append(document.createElement("tr"));
    tbody.firstChild.append(td);
    return;
  }
  for (const [reason, n] of entries) {
    const tr = document.createElement("tr");
    for (const text of [reason, fmtCount(n)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function backend(prefix, b) {
  $(prefix + "-kind").textContent = b.kind + (b.ready ? " · ready" : " · not ready");
  $(prefix + "-dot").className = "dot " + (b.ready ? "ready" : "down");
  const d = $(prefix + "-detail");
  d.textContent = b.error ? `${b.detail ? b.detail + " — " : ""}${b.error}` : b.detail;
  d.className = "detail" + (b.error ? " err" : "");
}

function nodes(s) {
  const card = $("nodes-card");
  card.hidden = s.nodes.length < 2 && !s.nodes_error; // one node: the card above says it all
  $("nodes-count").textContent = s.nodes_error ? "registry unavailable: " + s.nodes_error : `${s.nodes.length} live`;
  const tbody = $("nodes");
  tbody.replaceChildren();
  for (const n of s.nodes) {
    const tr = document.createElement("tr");
    if (n.id === s.node.id) tr.className = "self";
    const up = (s.now - Date.parse(n.started)) / 1000;
    for (const text of [n.id, n.addr, fmtCount(n.conns), n.version, fmtDuration(up)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function render() {
  const s = latest;
  if (!s) return;
  $("node-id").textContent = s.node.id;
  $("node-addr").textContent = s.node.addr;
  $("version").textContent = s.node.version;
  $("uptime").textContent = fmtDuration(s.node.uptime_s);
  const trs = transportOrder(Object.keys(hist.conns).concat(Object.keys(s.connections)).filter((v, i, a) => a.indexOf(v) === i));
  let total = 0;
  for (const tr of trs) total += s.connections[tr] || 0;
  $("conns-total").textContent = fmtCount(total);
  const legend = $("conns-legend");
  legend.replaceChildren();
  for (const tr of trs) {
    const li = document.createElement("li");
    const i = document.createElement("i");
    i.style.background = css(TRANSPORT_COLOURS[tr] || "--mute");
    const b = document.createElement("b");
    b.id = "conns-" + tr;
    b.textContent = fmtCount(s.connections[tr] || 0);
    li.append(i, tr + " ", b);
    legend.append(li);
  }
  const last = (k) => (hist[k].length ? hist[k][hist[k].length - 1] : undefined);
  $("rate-in").textContent = fmtRate(last("in"));
  $("rate-out").textContent = fmtRate(last("out"));
  $("rate-drops").textContent = fmtRate(last("drops"));
  $("rate-disc").textContent = fmtRate(last("disconnects"));
  $("rate-rej").textContent = fmtRate(last("rejections"));
  $("total-in").textContent = fmtCount(s.messages_in);
  $("total-out").textContent = fmtCount(s.deliveries);
  reasonRows($("drops"), s.drops);
  reasonRows($("disconnects"), s.disconnects);
  reasonRows($("rejections"), s.rejections);
  backend("broker", s.broker);
  backend("store", s.store);
  nodes(s);
  drawAll();
}

function drawAll() {
  const trs = transportOrder(Object.keys(hist.conns));
  draw($("chart-conns"), trs.map((tr) => ({ values: hist.conns[tr], colour: css(TRANSPORT_COLOURS[tr] || "--mute") })), true);
  draw($("chart-traffic"), [{ values: hist.in, colour: css("--c-in") }, { values: hist.out, colour: css("--c-out") }]);
  draw($("chart-losses"), [
    { values: hist.rejections, colour: css("--c-rej") },
    { values: hist.disconnects, colour: css("--c-disc") },
    { values: hist.drops, colour: css("--c-drop") },
  ]);
}

async function poll() {
  timer = 0;
  if (document.hidden || stopped || inflight) return;
  inflight = true;
  let next = 1000;
  try {
    const resp = await fetch(`/status.json?since=${lastT}`, { cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      const body = await resp.json().catch(() => ({}));
      stopped = true;
      setLive("error", "refused");
      showProblem(`${resp.status}: ${body.error || "not allowed"}. Open this page from the gateway's machine (or through an SSH tunnel), or through a proxy that adds the --publish-token.`);
      return;
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    latest = await resp.json();
    period = latest.series.period_ms || period;
    merge(latest.series);
    backoff = 1000;
    showProblem("");
    if (latest.draining) setLive("draining", "draining");
    else if (document.hidden) setLive("paused", "paused"); // hidden while this request was out
    else setLive("live", "live");
    render();
  } catch (err) {
    setLive("error", "unreachable");
    showProblem(`Cannot reach the gateway (${err.message}); retrying in ${Math.round(backoff / 1000)} s.`);
    next = backoff;
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  } finally {
    inflight = false;
  }
  if (!document.hidden && !timer) timer = setTimeout(poll, next);
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    clearTimeout(timer);
    timer = 0;
    if (!stopped) setLive("paused", "paused");
  } else if (!timer) {
    poll(); // catch up at once: since= fetches what was missed
  }
});
window.addEventListener("resize", drawAll);
poll();
