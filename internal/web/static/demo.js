// The demo page: connect with a key, watch the state, see messages arrive,
// and (on embedded defaults) publish one. Everything goes through
// wspubsub.js, as a real page would.
import { WsPubSub } from "/wspubsub.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const config = await fetch("/demo/config.json").then((r) => r.json()).catch(() => ({ path: "/websocket", demoKey: "" }));

let client = null;
let reconnects = 0;
let count = 0;

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
  const live = client && client.readyState !== WsPubSub.CLOSED;
  $("connect").disabled = !!live;
  $("disconnect").disabled = !live;
  $("ping").disabled = !(client && client.readyState === WsPubSub.OPEN);
}
setInterval(refresh, 1000);

function show(text) {
  const li = document.createElement("li");
  let body = text;
  try { body = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { li.className = "heartbeat"; }
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const pre = document.createElement("pre");
  pre.textContent = body;
  li.append(time, pre);
  $("messages").prepend(li);
  $("count").textContent = String(++count);
}

function connect() {
  const key = $("key").value.trim();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + config.path + "?" + encodeURIComponent(key);
  $("error").hidden = true;
  client = new WsPubSub(url, {
    websocket: $("t-websocket").checked, eventsource: $("t-eventsource").checked, polling: $("t-polling").checked,
  });
  setState("connecting", "connecting…");
  client.onopen = () => { setState("open", "connected"); refresh(); };
  client.ondisconnect = () => { reconnects++; setState("connecting", "reconnecting…"); refresh(); };
  client.onmessage = (e) => show(e.data);
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
$("disconnect").onclick = () => { client.close(); setState("closed", "disconnected"); refresh(); };
$("ping").onclick = () => client.send("ping");

if (config.publish) {
  $("publish-card").hidden = false;
  const cli = () => `go run ./cmd/wspubsub publish --to ${$("key").value.trim()} '${$("publish-data").value.replace(/\s+/g, " ")}'`;
  $("publish-cli").textContent = cli();
  $("key").oninput = $("publish-data").oninput = () => { $("publish-cli").textContent = cli(); };
  $("publish").onclick = async () => {
    let data;
    try { data = JSON.parse($("publish-data").value); } catch (e) { $("publish-result").textContent = "not JSON: " + e.message; return; }
    const res = await fetch("/publish", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ recipients: [$("key").value.trim()], data }) });
    $("publish-result").textContent = res.ok ? "published" : "refused: " + (await res.text());
  };
}

if (params.get("autoconnect") !== "0") connect();
