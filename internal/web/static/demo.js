// The demo page: connect with a key, watch the state, see messages arrive,
// and (on the demo key store) publish one. Everything goes through
// wspubsub.js, as a real page would. The page resumes: every message shows
// its id, a reconnect is marked where it happened (what follows the mark was
// caught up from the gateway's history, then live), and a gap is announced.
import { WsPubSub } from "/wspubsub.js";
import { publishCommand, modeHint } from "/demo-cli.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const config = await fetch("/demo/config.json").then((r) => r.json()).catch(() => ({ path: "/websocket", demoKey: "" }));

let client = null;
let reconnects = 0;
let count = 0;
let resuming = false; // the next open is a reconnect: mark it in the list
let carried = { key: null, lastId: "" }; // what Connect resumes after Disconnect

$("key").value = params.get("key") ?? config.demoKey ?? "";
const only = params.get("transports");
if (only) {
  for (const t of ["websocket", "eventsource", "polling"]) $("t-" + t).checked = only.split(",").includes(t);
}

function setState(state, label) {
  const el = $("state");
  el.className = "pill " + state;
  el.dataset.state = state;
  el.textContent = label || state;
}

function fmt(d) { return d ? d.toLocaleTimeString() : "—"; }

function refresh() {
  $("transport").textContent = client && client.transport ? client.transport : "—";
  $("since").textContent = client ? fmt(client.connectedSince) : "—";
  $("heartbeat").textContent = client ? fmt(client.lastHeartbeat) : "—";
  $("reconnects").textContent = String(reconnects);
  $("last-id").textContent = client && client.lastId ? client.lastId : "—";
  const live = client && client.readyState !== WsPubSub.CLOSED;
  $("connect").disabled = !!live;
  $("disconnect").disabled = !live;
  $("ping").disabled = !(client && client.readyState === WsPubSub.OPEN);
}
setInterval(refresh, 1000);

function stamp() {
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  return time;
}

function show(e) {
  const li = document.createElement("li");
  li.className = "message";
  let body = e.data;
  try { body = JSON.stringify(JSON.parse(e.data), null, 2); } catch (_) { li.className = "heartbeat"; }
  const head = [stamp()];
  if (e.id) {
    li.dataset.id = e.id;
    const id = document.createElement("code");
    id.className = "id";
    id.textContent = "id " + e.id;
    head.push(id);
  } else if (li.className === "message") {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "live only";
    tag.title = "Published without an id (plain PUBLISH or a broadcast): not kept for resume";
    head.push(tag);
  }
  const pre = document.createElement("pre");
  pre.textContent = body;
  li.append(...head, pre);
  $("messages").prepend(li);
  $("count").textContent = String(++count);
  refresh();
}

// notice puts a line between messages: a reconnect or a gap.
function notice(kind, text) {
  const li = document.createElement("li");
  li.className = "notice " + kind;
  const p = document.createElement("p");
  p.textContent = text;
  li.append(stamp(), p);
  $("messages").prepend(li);
}

function connect() {
  const key = $("key").value.trim();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + config.path + "?" + encodeURIComponent(key);
  $("error").hidden = true;
  // Connect after Disconnect resumes too, from the last id of the same key.
  const since = carried.key === key ? carried.lastId : "";
  resuming = since !== "";
  client = new WsPubSub(url, {
    websocket: $("t-websocket").checked, eventsource: $("t-eventsource").checked, polling: $("t-polling").checked,
    since,
  });
  setState("connecting", "connecting…");
  client.onopen = () => {
    setState("open", "connected");
    if (resuming) {
      resuming = false;
      notice("reconnected", client.lastId
        ? `Reconnected over ${client.transport}: resumed after id ${client.lastId}. What was published meanwhile follows, in order, once.`
        : `Reconnected over ${client.transport} (no id received before: from now).`);
    }
    refresh();
  };
  client.ondisconnect = () => { reconnects++; resuming = true; setState("connecting", "reconnecting…"); refresh(); };
  client.onmessage = (e) => show(e);
  client.ongap = (e) => notice("gap", `Gap: the gateway no longer holds what came after id ${e.since || "—"}; some messages were lost. The oldest it still holds follow.`);
  client.onheartbeat = () => refresh();
  client.onerror = (e) => {
    const why = e.code === 4401 ? "unauthorized" : e.code === 4403 ? "revoked" : "closed";
    setState(why);
    $("error").textContent = why === "unauthorized" ? "Unauthorized: this key is not known (4401). Not retrying."
      : why === "revoked" ? "Revoked: this key was removed (4403). Not retrying." : "Closed: " + e.reason;
    $("error").hidden = false;
  };
  client.onclose = () => refresh();
  refresh();
}

$("connect").onclick = connect;
$("disconnect").onclick = () => {
  carried = { key: $("key").value.trim(), lastId: client.lastId };
  client.close();
  setState("closed", "disconnected");
  refresh();
};
$("ping").onclick = () => client.send("ping");

if (config.publish) {
  $("publish-card").hidden = false;
  $("publish-mode").textContent = modeHint(config.broker);
  const cli = () => publishCommand(location.origin, $("key").value.trim(), $("publish-data").value);
  $("publish-cli").textContent = cli();
  $("key").oninput = $("publish-data").oninput = () => { $("publish-cli").textContent = cli(); };
  $("publish").onclick = async () => {
    let data;
    try { data = JSON.parse($("publish-data").value); } catch (e) { $("publish-result").textContent = "not JSON: " + e.message; return; }
    const res = await fetch("/publish", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ recipients: [$("key").value.trim()], data }) });
    const body = await res.text();
    let ids = null;
    try { ids = JSON.parse(body).ids; } catch (_) { /* not JSON: shown as is below */ }
    $("publish-result").textContent = !res.ok ? "refused: " + body : ids && ids.length ? "published, id " + ids.join(", ") : "published";
  };
}

if (params.get("autoconnect") !== "0") connect();
