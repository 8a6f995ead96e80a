// Tests of wspubsub.js's reconnect, fallback and heartbeat logic, with fake
// transports and a fake clock: node --test internal/web/static/
import { test } from "node:test";
import assert from "node:assert/strict";
import { WsPubSub, backoffDelay, toHTTP } from "./wspubsub.js";

// fakeClock runs timers when told to, in time order.
function fakeClock() {
  let now = 0, seq = 0;
  const timers = new Map();
  const add = (fn, d, every) => { const id = ++seq; timers.set(id, { at: now + d, fn, every }); return id; };
  return {
    setTimeout: (fn, d) => add(fn, d, 0),
    setInterval: (fn, d) => add(fn, d, d),
    clearTimeout: (id) => timers.delete(id),
    clearInterval: (id) => timers.delete(id),
    now: () => now,
    pending: () => [...timers.values()].map((t) => t.at - now),
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let next = null, nextID = null;
        for (const [id, t] of timers) if (t.at <= end && (next === null || t.at < next.at)) { next = t; nextID = id; }
        if (!next) break;
        now = next.at;
        if (next.every) next.at += next.every; else timers.delete(nextID);
        next.fn();
      }
      now = end;
    },
  };
}

// fakeTransports records every transport the client opens and lets the
// test drive them.
function fakeTransports() {
  const opened = [];
  const make = (name) => (url, env, cb) => {
    const t = { name, url, cb, sent: [], closed: false };
    opened.push(t);
    return { send: (d) => { t.sent.push(d); return true; }, close: () => { t.closed = true; } };
  };
  return { opened, factories: { websocket: make("websocket"), eventsource: make("eventsource"), polling: make("polling") } };
}

function client(opts = {}) {
  const clock = fakeClock();
  const ft = fakeTransports();
  const env = Object.assign({ WebSocket: function () {}, EventSource: function () {}, fetch: () => {}, random: () => 0.5 }, clock);
  const c = new WsPubSub("ws://gw/websocket?k", Object.assign({ env, factories: ft.factories }, opts));
  const log = [];
  c.onopen = () => log.push("open");
  c.onmessage = (e) => log.push("msg:" + e.data);
  c.ondisconnect = () => log.push("disconnect");
  c.onerror = (e) => log.push("error:" + e.code);
  c.onclose = (e) => log.push("close:" + e.code);
  c.onheartbeat = () => log.push("beat");
  return { c, clock, opened: ft.opened, log };
}

test("backoffDelay uses full jitter under an exponential cap", () => {
  assert.equal(backoffDelay(0, 100, 10000, () => 0), 0);
  assert.equal(backoffDelay(3, 100, 10000, () => 0.999999), 799);
  assert.equal(backoffDelay(30, 100, 10000, () => 0.999999), 9999);
  const seen = new Set();
  for (let i = 0; i < 50; i++) seen.add(backoffDelay(5, 100, 10000));
  assert.ok(seen.size > 40, "delays are spread out");
});

test("toHTTP maps ws and wss", () => {
  assert.equal(toHTTP("ws://a/b?c"), "http://a/b?c");
  assert.equal(toHTTP("wss://a/b"), "https://a/b");
});

test("falls back WebSocket → EventSource → polling, then starts over", () => {
  const { c, clock, opened, log } = client();
  assert.equal(opened[0].name, "websocket");
  assert.equal(c.readyState, WsPubSub.CONNECTING);
  opened[0].cb.onclose(1006, "", false);
  clock.advance(10000);
  assert.equal(opened[1].name, "eventsource");
  opened[1].cb.onclose(1006, "", false);
  clock.advance(10000);
  assert.equal(opened[2].name, "polling");
  opened[2].cb.onclose(1006, "", false);
  clock.advance(10000);
  assert.deepEqual(log, ["disconnect"]);
  clock.advance(10000);
  assert.equal(opened[3].name, "websocket", "after every transport failed it starts over");
});

test("a transport that had opened reconnects with itself, with growing jittered waits", () => {
  const { c, clock, opened, log } = client({ random: undefined });
  opened[0].cb.onopen();
  assert.equal(c.readyState, WsPubSub.OPEN);
  assert.equal(c.transport, "websocket");
  opened[0].cb.onmessage('{"data":1}');
  opened[0].cb.onclose(1006, "", true);
  assert.equal(c.readyState, WsPubSub.CONNECTING);
  assert.deepEqual(clock.pending(), [50], "first wait is jitter(0..100) = 50 with random 0.5");
  clock.advance(50);
  assert.equal(opened[1].name, "websocket");
  opened[1].cb.onclose(1006, "", true);
  assert.deepEqual(clock.pending(), [100], "second wait: jitter(0..200)");
  clock.advance(100);
  opened[2].cb.onopen();
  assert.deepEqual(log, ["open", 'msg:{"data":1}', "disconnect", "disconnect", "open"], "onopen again after a reconnect, as bullet");
  opened[2].cb.onclose(1006, "", true);
  assert.deepEqual(clock.pending(), [50], "backoff resets after a successful open");
});

test("4401 and 4403 are final: no retry, the page is told why", () => {
  for (const code of [4401, 4403]) {
    const { c, clock, opened, log } = client();
    opened[0].cb.onclose(code, "", false);
    clock.advance(60000);
    assert.equal(opened.length, 1, "no retry after " + code);
    assert.equal(c.readyState, WsPubSub.CLOSED);
    assert.equal(c.closeCode, code);
    assert.equal(c.closeReason, code === 4401 ? "unauthorized" : "revoked");
    assert.deepEqual(log, ["error:" + code, "close:" + code]);
  }
});

test("heartbeat pings, swallows its own answers, and replaces a dead connection", () => {
  const { c, clock, opened, log } = client({ heartbeatInterval: 1000, heartbeatTimeout: 500 });
  opened[0].cb.onopen();
  clock.advance(1000);
  assert.deepEqual(opened[0].sent, ["ping"]);
  opened[0].cb.onmessage("heartbeat message");
  assert.ok(c.lastHeartbeat instanceof Date);
  c.send("ping"); // the page's own ping: its answer is delivered
  opened[0].cb.onmessage("heartbeat message");
  assert.deepEqual(log, ["open", "beat", "msg:heartbeat message"]);
  clock.advance(1000); // ping, and no answer
  clock.advance(500);
  assert.ok(opened[0].closed, "dead transport closed");
  assert.ok(log.includes("disconnect"));
  clock.advance(100);
  assert.equal(opened.length, 2, "reconnected");
});

test("bullet's options disable transports", () => {
  const { opened } = client({ disableWebSocket: true, disableEventSource: true });
  assert.equal(opened[0].name, "polling");
});

test("close() is final and silent afterwards", () => {
  const { c, clock, opened, log } = client();
  opened[0].cb.onopen();
  c.close();
  assert.ok(opened[0].closed);
  opened[0].cb.onclose(1000, "", true); // late event from the transport
  clock.advance(60000);
  assert.equal(opened.length, 1);
  assert.equal(c.readyState, WsPubSub.CLOSED);
  assert.deepEqual(log, ["open", "close:1000"]);
});

test("the WebSocket factory maps browser events", () => {
  const sockets = [];
  class FakeWS { constructor(url) { this.url = url; this.sent = []; sockets.push(this); } send(d) { this.sent.push(d); } close() { this.closed = true; } }
  const clock = fakeClock();
  const c = new WsPubSub("ws://gw/websocket?k", { env: Object.assign({ WebSocket: FakeWS, random: () => 0.5 }, clock) });
  const got = [];
  c.onmessage = (e) => got.push(e.data);
  sockets[0].onopen();
  assert.equal(c.transport, "websocket");
  sockets[0].onmessage({ data: "x" });
  c.send("hello");
  assert.deepEqual(sockets[0].sent, ["hello"]);
  sockets[0].onclose({ code: 4401, reason: "unauthorized" });
  assert.equal(c.closeCode, 4401);
  assert.deepEqual(got, ["x"]);
});
