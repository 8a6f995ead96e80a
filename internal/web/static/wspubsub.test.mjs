// Tests of wspubsub.js's reconnect, fallback and heartbeat logic, with fake
// transports and a fake clock: node --test internal/web/static/
import { test } from "node:test";
import assert from "node:assert/strict";
import { WsPubSub, backoffDelay, toHTTP, bullet, parseFrame, splitSince, tokenExpiry } from "./wspubsub.js";

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
    // since: what the transport was told to resume from when it opened.
    const t = { name, url, cb, since: cb.since(), sent: [], closed: false };
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
  c.ongap = (e) => log.push("gap:" + e.since);
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

// --- resume (issue 8) ---

// FakeWS stands for the browser's WebSocket; FakeWS.last is the newest.
class FakeWS {
  constructor(url) { this.url = url; this.sent = []; FakeWS.last = this; }
  send(d) { this.sent.push(d); }
  close() { this.closed = true; }
}

test("parseFrame reads recorded, position, gap and plain frames", () => {
  assert.deepEqual(parseFrame('{"id":"1.2-3","data":{"n":1}}'), { id: "1.2-3", data: '{"data":{"n":1}}' });
  assert.deepEqual(parseFrame('{"id":"1.2-3","data":"x","extra":true}'), { id: "1.2-3", data: '{"data":"x","extra":true}' });
  assert.deepEqual(parseFrame('{"id":"0"}'), { id: "0", position: true });
  assert.deepEqual(parseFrame('{"gap":true}'), { gap: true });
  assert.equal(parseFrame('{"data":{"id":"x"}}'), null, "live-only message");
  assert.equal(parseFrame("heartbeat message"), null);
  assert.equal(parseFrame('{"id":""}'), null);
});

test("splitSince takes a since= out of the URL", () => {
  assert.deepEqual(splitSince("ws://gw/websocket?k&since=a.1-2&x=1"), ["ws://gw/websocket?k&x=1", "a.1-2"]);
  assert.deepEqual(splitSince("ws://gw/websocket?k"), ["ws://gw/websocket?k", null]);
  assert.deepEqual(splitSince("ws://gw/websocket?k&since="), ["ws://gw/websocket?k", ""]);
});

test("first connect asks for since= (from now) unless the page gives one", () => {
  assert.equal(client().opened[0].since, "");
  assert.equal(client({ since: "5.0-1" }).opened[0].since, "5.0-1");
  const fromURL = new WsPubSub("ws://gw/websocket?k&since=7.0-2", { env: { WebSocket: FakeWS, random: () => 0.5, ...fakeClock() } });
  assert.equal(FakeWS.last.url, "ws://gw/websocket?k&since=7.0-2", "one since=, the URL's");
  assert.equal(fromURL.lastId, "7.0-2");
});

test("the position frame sets lastId and is not a message", () => {
  const { c, opened, log } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"9.0-4"}');
  assert.equal(c.lastId, "9.0-4");
  assert.deepEqual(log.filter((l) => l !== "beat"), ["open"]);
});

test("messages carry their id; e.data is the original frame", () => {
  const { c, opened } = client();
  const got = [];
  c.onmessage = (e) => got.push([e.data, e.id]);
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"9.0-5","data":{"n":1}}');
  opened[0].cb.onmessage('{"data":{"live":true}}'); // PUBLISH my_channel: not recorded, no id
  assert.deepEqual(got, [['{"data":{"n":1}}', "9.0-5"], ['{"data":{"live":true}}', undefined]]);
  assert.equal(c.lastId, "9.0-5", "a message without id leaves lastId alone");
});

test("every reconnect resumes from the last id received", () => {
  const { c, clock, opened } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"1"}');
  opened[0].cb.onmessage('{"id":"2","data":1}');
  opened[0].cb.onclose(1006, "", true);
  clock.advance(100);
  assert.equal(opened[1].name, "websocket");
  assert.equal(opened[1].since, "2");
  opened[1].cb.onopen();
  opened[1].cb.onmessage('{"id":"3","data":2}');
  opened[1].cb.onclose(1001, "going away", true);
  clock.advance(1000);
  assert.equal(opened[2].since, "3");
  assert.equal(c.lastId, "3");
});

test("1012 (a drain) reconnects soon, on the same transport, from the last id", () => {
  const { c, clock, opened, log } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"5","data":1}');
  opened[0].cb.onclose(1012, "service restart", true);
  assert.deepEqual(clock.pending(), [50], "a jittered 0-100 ms (random 0.5)");
  clock.advance(50);
  assert.deepEqual([opened[1].name, opened[1].since], ["websocket", "5"]);
  opened[1].cb.onopen();
  assert.equal(c.readyState, WsPubSub.OPEN);
  assert.deepEqual(log, ["open", 'msg:{"data":1}', "disconnect", "open"]);
});

test("a client the draining gateway refuses with 1012 waits longer each time and does not fall back", () => {
  const { clock, opened } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"5","data":1}');
  opened[0].cb.onclose(1012, "", true); // drained
  clock.advance(50);
  // Back on the draining gateway (the load balancer has not noticed yet):
  // a WebSocket is upgraded, then closed with 1012 before any frame.
  opened[1].cb.onopen();
  opened[1].cb.onclose(1012, "", true);
  assert.deepEqual(clock.pending(), [100], "jitter(0..200): the open did not reset it");
  clock.advance(100);
  // A poll is refused with 503 and the code: not a reason to fall back.
  opened[2].cb.onclose(1012, "", false);
  assert.deepEqual(clock.pending(), [200]);
  clock.advance(200);
  assert.deepEqual(opened.map((t) => t.name), ["websocket", "websocket", "websocket", "websocket"]);
  assert.ok(opened.slice(1).every((t) => t.since === "5"), "every attempt resumes from the last id");
  // Another node serves it: its first frame resets the wait.
  opened[3].cb.onopen();
  opened[3].cb.onmessage('{"id":"6","data":2}');
  opened[3].cb.onclose(1012, "", true);
  assert.deepEqual(clock.pending(), [50]);
});

test("gap calls ongap, is not a message, and keeps lastId until the next id", () => {
  const { c, clock, opened, log } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"4","data":1}');
  opened[0].cb.onclose(1006, "", true);
  clock.advance(100);
  opened[1].cb.onopen();
  opened[1].cb.onmessage('{"gap":true}');
  assert.equal(c.lastId, "4");
  opened[1].cb.onmessage('{"id":"9","data":2}');
  assert.deepEqual(log, ["open", 'msg:{"data":1}', "disconnect", "open", "gap:4", 'msg:{"data":2}']);
  assert.equal(c.lastId, "9");
});

test("fallback transports resume from the last id too", () => {
  const { clock, opened } = client();
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"7","data":1}');
  opened[0].cb.onclose(1006, "", true);
  clock.advance(100);
  opened[1].cb.onclose(1006, "", false); // WebSocket no longer connects
  clock.advance(10000);
  assert.deepEqual(opened.slice(2).map((t) => [t.name, t.since]), [["eventsource", "7"]]);
  opened[2].cb.onclose(1006, "", false);
  clock.advance(10000);
  assert.deepEqual(opened.slice(3).map((t) => [t.name, t.since]), [["polling", "7"]]);
});

test("resume: false keeps the original frames and sends no since", () => {
  const { c, opened, log } = client({ resume: false });
  assert.equal(opened[0].since, null);
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"1"}');
  assert.equal(c.lastId, "");
  assert.deepEqual(log, ["open", 'msg:{"id":"1"}']);
});

test("storageKey keeps lastId in sessionStorage across page loads", () => {
  const store = new Map();
  const sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const mk = () => new WsPubSub("ws://gw/websocket?k", { storageKey: "feed", since: "1", env: { WebSocket: FakeWS, sessionStorage, random: () => 0.5, ...fakeClock() } });
  const a = mk();
  assert.equal(FakeWS.last.url, "ws://gw/websocket?k&since=1");
  FakeWS.last.onopen();
  FakeWS.last.onmessage({ data: '{"id":"8","data":0}' });
  assert.equal(store.get("feed"), "8");
  a.close();
  mk(); // the reloaded page
  assert.equal(FakeWS.last.url, "ws://gw/websocket?k&since=8", "the stored id wins over since");
});

test("the real WebSocket factory puts since= on each connect URL", () => {
  const clock = fakeClock();
  const urls = [];
  class WS extends FakeWS { constructor(url) { super(url); urls.push(url); } }
  const c = new WsPubSub("ws://gw/websocket?k", { env: Object.assign({ WebSocket: WS, random: () => 0.5 }, clock) });
  FakeWS.last.onopen();
  FakeWS.last.onmessage({ data: '{"id":"a.1-1"}' });
  FakeWS.last.onclose({ code: 1006 });
  clock.advance(100);
  assert.deepEqual(urls, ["ws://gw/websocket?k&since=", "ws://gw/websocket?k&since=a.1-1"]);
  c.close();
});

test("the real EventSource factory puts since= on each stream it opens", () => {
  const clock = fakeClock();
  const streams = [];
  class ES {
    constructor(url) { this.url = url; streams.push(this); this.listeners = {}; }
    addEventListener(n, f) { this.listeners[n] = f; }
    close() { this.closed = true; }
  }
  const c = new WsPubSub("ws://gw/websocket?k", { websocket: false, env: Object.assign({ EventSource: ES, fetch: () => new Promise(() => {}), random: () => 0.5 }, clock) });
  const got = [];
  c.onmessage = (e) => got.push(e.id);
  streams[0].onopen();
  streams[0].onmessage({ data: '{"id":"p"}' });
  streams[0].onmessage({ data: '{"id":"q","data":1}' });
  streams[0].onerror(); // the browser would retry with Last-Event-ID; the client reopens itself
  clock.advance(100);
  assert.equal(streams.length, 2);
  assert.match(streams[0].url, /^http:\/\/gw\/websocket\?k&sid=[0-9a-z]+&since=$/);
  assert.match(streams[1].url, /^http:\/\/gw\/websocket\?k&sid=[0-9a-z]+&since=q$/);
  assert.deepEqual(got, ["q"]);
  c.close();
});

test("long-polling sends since=<last id> on every poll", async () => {
  const clock = fakeClock();
  const answers = ['{"id":"p0"}', '{"id":"p1","data":1}', '{"data":"live"}', '{"id":"p2","data":2}'];
  const polls = [];
  let release;
  const stalled = new Promise((r) => { release = r; });
  const fetch = (url, init) => {
    if (init && init.method === "POST") return new Promise(() => {});
    polls.push(url);
    const body = answers.shift();
    if (body === undefined) return stalled.then(() => { throw new Error("aborted"); });
    return Promise.resolve({ ok: true, status: 200, text: () => Promise.resolve(body), headers: new Map() });
  };
  const c = new WsPubSub("ws://gw/websocket?k", { websocket: false, eventsource: false, env: Object.assign({ fetch, random: () => 0.5 }, clock) });
  const got = [];
  c.onmessage = (e) => got.push(e.data);
  for (let i = 0; i < 20 && polls.length < 5; i++) await new Promise((r) => setImmediate(r));
  const since = polls.map((u) => new URL(u).searchParams.get("since"));
  assert.deepEqual(since, ["", "p0", "p1", "p1", "p2"], "a message without id does not move since");
  assert.deepEqual(got, ['{"data":1}', '{"data":"live"}', '{"data":2}']);
  c.close();
  release();
});

test("$.bullet keeps the original frames unless the page opts in", () => {
  const clock = fakeClock();
  const env = Object.assign({ WebSocket: FakeWS, random: () => 0.5 }, clock);
  const b = bullet("ws://gw/websocket?k", { env });
  assert.equal(FakeWS.last.url, "ws://gw/websocket?k");
  const got = [];
  b.onmessage = (e) => got.push(e.data);
  FakeWS.last.onopen();
  FakeWS.last.onmessage({ data: '{"data":1}' });
  assert.deepEqual(got, ['{"data":1}']);
  b.close();
  const r = bullet("ws://gw/websocket?k", { env, resume: true });
  assert.equal(FakeWS.last.url, "ws://gw/websocket?k&since=");
  r.close();
});

// fakeJWT makes an unsigned token whose payload is claims (the client
// reads exp, never verifies).
function fakeJWT(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return b64({ alg: "HS256" }) + "." + b64(claims) + ".sig";
}

const tick = () => new Promise((r) => setImmediate(r));

test("tokenExpiry reads a JWT's exp in milliseconds", () => {
  assert.equal(tokenExpiry(fakeJWT({ sub: "a", exp: 60 })), 60000);
  assert.equal(tokenExpiry(fakeJWT({ sub: "a" })), null);
  assert.equal(tokenExpiry("not-a-token"), null);
});

// tokenClient returns a client whose token() hands out numbered tokens
// expiring at exps[i] (seconds on the fake clock).
function tokenClient(exps, opts = {}) {
  const issued = [];
  const token = async () => {
    const t = fakeJWT({ sub: "alice", exp: exps[Math.min(issued.length, exps.length - 1)], n: issued.length });
    issued.push(t);
    return t;
  };
  return Object.assign(client(Object.assign({ token, autoPing: false }, opts)), { issued });
}

test("token: called before connecting, sent as key=", async () => {
  const { opened, issued } = tokenClient([60]);
  assert.equal(opened.length, 0, "no transport before the token is known");
  await tick();
  assert.equal(issued.length, 1);
  assert.equal(opened[0].url, "ws://gw/websocket?k&key=" + encodeURIComponent(issued[0]));
});

test("token: a WebSocket sends a fresh token in a frame before exp", async () => {
  const { opened, issued, clock, log } = tokenClient([60, 120]);
  await tick();
  opened[0].cb.onopen();
  clock.advance(29999);
  await tick();
  assert.equal(issued.length, 1, "not refreshed before exp - refreshBefore");
  clock.advance(1);
  await tick();
  assert.equal(issued.length, 2);
  assert.deepEqual(opened[0].sent.filter((d) => d !== "ping"), [JSON.stringify({ token: issued[1] })]);
  assert.equal(opened.length, 1, "the WebSocket stays");
  // The next refresh follows the fresh token's exp (120 s): at 90 s.
  clock.advance(59999);
  await tick();
  assert.equal(issued.length, 2);
  clock.advance(1);
  await tick();
  assert.equal(issued.length, 3);
  assert.deepEqual(log.filter((l) => l !== "beat"), ["open"]);
});

test("token: a short-lived token is refreshed at half its remaining life", async () => {
  const { opened, issued, clock } = tokenClient([2, 60]);
  await tick();
  opened[0].cb.onopen();
  clock.advance(1000);
  await tick();
  assert.equal(issued.length, 2);
});

test("token: EventSource reconnects with the fresh token, resuming, without a second onopen", async () => {
  const { c, opened, issued, clock, log } = tokenClient([60, 120], { websocket: false });
  await tick();
  assert.equal(opened[0].name, "eventsource");
  opened[0].cb.onopen();
  opened[0].cb.onmessage('{"id":"7-0","data":1}');
  clock.advance(30000);
  await tick();
  await tick();
  assert.equal(opened.length, 2);
  assert.ok(opened[0].closed, "the old stream is closed");
  assert.equal(opened[1].name, "eventsource");
  assert.ok(opened[1].url.endsWith("key=" + encodeURIComponent(issued[1])));
  assert.equal(opened[1].since, "7-0", "resumes where it was");
  assert.equal(issued.length, 2, "the refreshed token is used, not a third");
  opened[1].cb.onopen();
  assert.equal(c.readyState, WsPubSub.OPEN);
  assert.deepEqual(log.filter((l) => l === "open"), ["open"]);
});

test("token: 4403 token expired reconnects with a fresh token; 4403 revoked is final", async () => {
  const { opened, issued, clock, log } = tokenClient([60]);
  await tick();
  opened[0].cb.onopen();
  opened[0].cb.onclose(4403, "token expired", true);
  clock.advance(10000);
  await tick();
  assert.equal(issued.length, 2);
  assert.equal(opened.length, 2);
  assert.equal(opened[1].name, "websocket");
  opened[1].cb.onopen();
  opened[1].cb.onclose(4403, "revoked", true);
  clock.advance(20000);
  await tick();
  assert.equal(opened.length, 2);
  assert.ok(log.includes("error:4403"));
});

test("token: a failing token() is retried with backoff, same transport", async () => {
  let calls = 0;
  const { opened, clock } = client({ token: async () => { calls++; if (calls < 2) throw new Error("offline"); return fakeJWT({ sub: "a", exp: 60 }); } });
  await tick();
  assert.equal(opened.length, 0);
  clock.advance(10000);
  await tick();
  assert.equal(calls, 2);
  assert.equal(opened[0].name, "websocket");
});

test("token: a token valid for months is not refreshed at once (timer limit)", async () => {
  const { opened, issued, clock } = tokenClient([100 * 24 * 3600, 200 * 24 * 3600]);
  await tick();
  opened[0].cb.onopen();
  clock.advance(2147483647);
  await tick();
  assert.equal(issued.length, 1, "still the first token after 24.8 days of a 100-day token");
});
