// wspubsub.js — the browser client for the wspubsub push gateway.
//
// No dependencies. An ES module (import { WsPubSub } from "/wspubsub.js");
// the gateway also serves it as a classic script at /wspubsub.script.js,
// which defines window.WsPubSub and, when jQuery is present, $.bullet — so a
// page written for bullet.js switches by changing its <script> line.
//
// It speaks bullet's API (onopen, onmessage(e) with e.data, ondisconnect,
// onclose, onheartbeat, send, close, setURL) over three transports on the
// same URL — WebSocket, then EventSource, then long-polling — falling back
// to the next when one cannot connect, and reconnecting with exponential
// backoff and full jitter. Close codes 4401 (unauthorized) and 4403
// (revoked) are final: no retry; onerror and onclose say why. 1012 (the
// gateway is draining for a deploy) reconnects at once-ish, with jitter, on
// the same transport; resuming clients lose nothing.
//
// Resume (on by default; resume: false or $.bullet without {resume: true}
// keep the original frames): the client remembers the id of the last message
// it got and asks for since=<that id> on every (re)connect, on every
// transport, and on every poll, so messages published while it was away
// arrive in order and once. onmessage(e) then has e.id besides e.data (e.data
// stays the frame without its id, byte-identical to the original's), and
// ongap(e) fires when the gateway's history no longer reaches back.
//
// Tokens (a gateway with --jwt-key, --jwks-url or --auth-url): with
// token: async () => "<jwt>", the client calls token() before every
// (re)connect and appends key=<token> to the URL (give the URL without a
// key), and, shortly before the token's exp (refreshBefore, 30 s, or half
// its remaining life if that is shorter), fetches a fresh one: a WebSocket
// sends it as the frame {"token":"…"}; EventSource and long-polling
// reconnect with it (resuming with since=, nothing is lost). A close 4403
// "token expired" then reconnects with a fresh token instead of giving up.

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const TRANSPORTS = ["websocket", "eventsource", "polling"];
const FINAL_CODES = new Set([4401, 4403]);
// 1012 "service restart": the gateway is draining (a deploy). Reconnect
// soon, on the same transport (the load balancer sends us to another node).
const RESTART = 1012;
const HEARTBEAT = "heartbeat message";
const TOKEN_EXPIRED = "token expired";
const MAX_TIMER = 2147483647;

/**
 * tokenExpiry returns a JWT's exp in milliseconds since the epoch, or null
 * when it has none or is not a JWT (it is read, not verified: the gateway
 * verifies).
 */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    const exp = JSON.parse(atob(b64)).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

/**
 * backoffDelay returns the wait before reconnect attempt n (0-based): a
 * uniformly random delay in [0, min(cap, base·2^n)] ("full jitter"), so
 * thousands of clients dropped together do not return together.
 */
export function backoffDelay(n, base = 100, cap = 10000, random = Math.random) {
  return Math.floor(random() * Math.min(cap, base * Math.pow(2, n)));
}

/** toHTTP turns a ws:// or wss:// URL into its http:// or https:// twin. */
export function toHTTP(url) {
  return url.replace(/^ws(s?):/i, "http$1:");
}

function withParam(url, name, value) {
  return url + (url.indexOf("?") < 0 ? "?" : "&") + name + "=" + encodeURIComponent(value);
}

// withSince adds since= to a URL; null means the client does not resume.
function withSince(url, since) {
  return since === null || since === undefined ? url : withParam(url, "since", since);
}

/**
 * splitSince removes a since= parameter from url (the client adds its own on
 * every connect; the gateway reads the first one) and returns [url, value],
 * value null when there was none.
 */
export function splitSince(url) {
  const q = url.indexOf("?");
  if (q < 0) return [url, null];
  let since = null;
  const kept = url.slice(q + 1).split("&").filter((p) => {
    if (!p.startsWith("since=")) return true;
    if (since === null) {
      try { since = decodeURIComponent(p.slice(6)); } catch (_) { since = p.slice(6); }
    }
    return false;
  });
  return [url.slice(0, q) + (kept.length ? "?" + kept.join("&") : ""), since];
}

const ID_PREFIX = '{"id":"';
const GAP = '{"gap":true}';

/**
 * parseFrame reads a resuming client's frame: {id, data} for a recorded
 * message (data is the frame without its id: the gateway puts the id first,
 * so cutting it off gives back the original {"data":…} text exactly),
 * {id, position: true} for the position frame {"id":"…"}, {gap: true} for
 * {"gap":true}, and null for anything else (live-only {"data":…}, heartbeat).
 */
export function parseFrame(text) {
  if (typeof text !== "string") return null;
  if (text === GAP) return { gap: true };
  if (!text.startsWith(ID_PREFIX)) return null;
  const end = text.indexOf('"', ID_PREFIX.length);
  if (end <= ID_PREFIX.length) return null;
  const id = text.slice(ID_PREFIX.length, end);
  if (id.indexOf("\\") >= 0) return null; // ids are plain [0-9a-z.-]; an escape is not one
  const rest = text.slice(end + 1);
  if (rest === "}") return { id, position: true };
  if (rest[0] === ",") return { id, data: "{" + rest.slice(1) };
  return null;
}

function defaultEnv() {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket, EventSource: g.EventSource,
    fetch: g.fetch ? g.fetch.bind(g) : undefined,
    setTimeout: g.setTimeout.bind(g), clearTimeout: g.clearTimeout.bind(g),
    setInterval: g.setInterval.bind(g), clearInterval: g.clearInterval.bind(g),
    random: Math.random, now: () => Date.now(),
    AbortController: g.AbortController,
    sessionStorage: storage(g),
  };
}

// storage returns sessionStorage, or undefined where reading it throws
// (sandboxed frames, storage disabled).
function storage(g) {
  try { return g.sessionStorage; } catch (_) { return undefined; }
}

// closeFromResponse reads the close code a gateway put on an HTTP answer.
function closeFromResponse(res) {
  const code = parseInt(res.headers.get("X-Wspubsub-Close-Code") || "", 10);
  return { code: code || 1006, reason: res.headers.get("X-Wspubsub-Close-Reason") || ("HTTP " + res.status) };
}

// postText sends client text the way bullet does for HTTP transports; a
// non-empty reply body (the heartbeat) is delivered as a message.
function postText(env, url, data, cb) {
  env.fetch(url, { method: "POST", body: String(data), headers: { "Content-Type": "text/plain;charset=UTF-8" }, cache: "no-store" })
    .then((res) => res.text().then((body) => {
      if (res.ok && body.length > 0) cb.onmessage(body);
    }))
    .catch(() => {});
}

// Each transport factory returns {send, close} and reports through cb:
// onopen(), onmessage(text), onclose(code, reason, wasOpen). cb.since()
// is the since= to ask for now (null: not resuming); it is read when a
// connection opens and, for long-polling, on every poll.
const factories = {
  websocket(url, env, cb) {
    let opened = false;
    const ws = new env.WebSocket(withSince(url, cb.since()));
    ws.onopen = () => { opened = true; cb.onopen(); };
    ws.onmessage = (e) => cb.onmessage(e.data);
    ws.onclose = (e) => cb.onclose(e.code || 1006, e.reason || "", opened);
    return {
      send: (d) => { ws.send(d); return true; },
      close: () => { ws.onclose = null; try { ws.close(1000); } catch (_) { /* already closed */ } },
    };
  },

  eventsource(url, env, cb, sid) {
    // The sid ties this client's POSTs to its stream.
    const httpURL = withParam(toHTTP(url), "sid", sid);
    let opened = false, done = false;
    // A new EventSource sends no Last-Event-ID: since= says where to resume.
    const es = new env.EventSource(withSince(httpURL, cb.since()));
    const finish = (code, reason) => {
      if (done) return;
      done = true;
      es.close();
      cb.onclose(code, reason, opened);
    };
    es.onopen = () => { if (!opened) { opened = true; cb.onopen(); } };
    es.onmessage = (e) => cb.onmessage(e.data);
    es.addEventListener("close", (e) => {
      let c = { code: 1006, reason: "" };
      try { c = JSON.parse(e.data); } catch (_) { /* keep 1006 */ }
      finish(c.code, c.reason);
    });
    // The browser would retry on its own; we close and let our backoff decide.
    es.onerror = () => finish(1006, "eventsource error");
    return {
      send: (d) => { postText(env, httpURL, d, cb); return true; },
      close: () => { done = true; es.close(); },
    };
  },

  polling(url, env, cb, sid) {
    const httpURL = withParam(toHTTP(url), "sid", sid);
    let opened = false, done = false, ctrl = null;
    const finish = (code, reason) => {
      if (done) return;
      done = true;
      cb.onclose(code, reason, opened);
    };
    const poll = () => {
      if (done) return;
      ctrl = env.AbortController ? new env.AbortController() : null;
      // since= on every poll: the gateway answers again what a poll naming
      // the same since got, in case that answer was lost on the way.
      env.fetch(withSince(httpURL, cb.since()), { headers: { "X-Socket-Transport": "xhrPolling" }, cache: "no-store", signal: ctrl && ctrl.signal })
        .then((res) => {
          if (!res.ok) return finish(closeFromResponse(res).code, closeFromResponse(res).reason);
          return res.text().then((body) => {
            if (done) return;
            if (!opened) { opened = true; cb.onopen(); }
            if (body.length > 0) cb.onmessage(body);
            poll();
          });
        })
        .catch(() => finish(1006, "poll failed"));
    };
    poll();
    return {
      send: (d) => { postText(env, httpURL, d, cb); return true; },
      close: () => { done = true; if (ctrl) ctrl.abort(); },
    };
  },
};

/**
 * WsPubSub is one logical connection to a wspubsub gateway.
 *
 * options: websocket, eventsource, polling (booleans, default true; bullet's
 * disableWebSocket / disableEventSource / disableXHRPolling work too),
 * baseDelay (100 ms), maxDelay (10 s), heartbeatInterval (20 s; onheartbeat
 * fires and, with autoPing, "ping" is sent), heartbeatTimeout (10 s without
 * any answer after a ping: the connection is dead and is replaced).
 *
 * Resume: resume (default true; false: the original frames, no since=),
 * since (where the first connect starts: an id, or "" for "from now", the
 * default; a since= in the URL works too), storageKey (opt in to keeping the
 * last id in sessionStorage under this name, so a reload resumes; a stored id
 * wins over since). lastId is the id of the last message received.
 *
 * Tokens: token (an async function returning a JWT or hook credential,
 * called before each (re)connect and before the token expires), and
 * refreshBefore (30 s: how long before exp a fresh token is fetched).
 */
export class WsPubSub {
  constructor(url, options = {}) {
    const o = Object.assign({
      websocket: !options.disableWebSocket, eventsource: !options.disableEventSource,
      polling: !options.disableXHRPolling, baseDelay: 100, maxDelay: 10000,
      heartbeatInterval: 20000, heartbeatTimeout: 10000, autoPing: true, resume: true,
      token: null, refreshBefore: 30000,
    }, options);
    this.options = o;
    this._resume = o.resume !== false;
    this.readyState = CLOSED;
    this.transport = null;     // "websocket", "eventsource" or "polling" while connected
    this.connectedSince = null; // Date of the current connection
    this.lastHeartbeat = null;  // Date of the last heartbeat reply
    this.closeCode = null;      // set when the connection ended for good
    this.closeReason = null;
    this.onopen = this.onmessage = this.ondisconnect = this.onclose = this.onheartbeat = this.onerror = this.ongap = () => {};
    this._env = Object.assign(defaultEnv(), o.env || {});
    this.lastId = "";
    this.url = url;
    if (this._resume) {
      let since = o.since === undefined || o.since === null ? null : String(o.since);
      const [bare, inURL] = splitSince(url);
      this.url = bare;
      if (since === null) since = inURL;
      const stored = this._load();
      this.lastId = stored || since || "";
    }
    this._sid = Math.floor(this._env.random() * 1e16).toString(36);
    this._factories = Object.assign({}, factories, o.factories || {});
    this._tn = 0;
    this._attempt = 0;
    this._restarts = 0; // 1012 closes since the last frame received
    this._t = null;
    this._timer = null;
    this._beat = null;
    this._pingTimer = null;
    this._pendingPings = 0;
    this._stopped = false;
    this._token = null;       // the token of the current connection (token option)
    this._nextToken = null;   // a fresh token for the next connect
    this._tokenGen = 0;       // the connect a pending token() is for
    this._refreshTimer = null;
    this._connect();
  }

  /** transports lists the transports this client may use, in order. */
  transports() {
    const env = this._env;
    const available = { websocket: !!env.WebSocket, eventsource: !!env.EventSource && !!env.fetch, polling: !!env.fetch };
    return TRANSPORTS.filter((t) => this.options[t] && available[t]);
  }

  _connect() {
    if (this._stopped) return;
    if (!this.options.token) return this._open(this.url);
    // A token refreshed for a reconnect (EventSource, polling) is used
    // once; otherwise ask the page for one.
    const fresh = this._nextToken;
    this._nextToken = null;
    const gen = ++this._tokenGen;
    Promise.resolve().then(() => fresh || this.options.token()).then((tok) => {
      if (this._stopped || gen !== this._tokenGen) return;
      this._token = String(tok);
      this._open(withParam(this.url, "key", this._token));
    }, () => {
      if (this._stopped || gen !== this._tokenGen) return;
      // No token now: try again later, on the same transport.
      const delay = backoffDelay(this._attempt++, this.options.baseDelay, this.options.maxDelay, this._env.random);
      this._timer = this._env.setTimeout(() => this._connect(), delay);
    });
  }

  _open(url) {
    const order = this.transports();
    if (this._tn >= order.length) {
      // Every transport failed to connect: start over after the longest wait.
      this._tn = 0;
      this.ondisconnect();
      if (order.length === 0) return this._final(1006, "no transport available");
      this._timer = this._env.setTimeout(() => this._connect(), this.options.maxDelay);
      return;
    }
    const name = order[this._tn];
    this.readyState = this.readyState === OPEN ? OPEN : CONNECTING;
    let current = null;
    const cb = {
      onopen: () => { if (this._t === current) this._opened(name); },
      onmessage: (text) => { if (this._t === current) this._message(text); },
      onclose: (code, reason, wasOpen) => { if (this._t === current) this._closed(code, reason, wasOpen); },
      since: () => (this._resume ? this.lastId : null),
    };
    try {
      current = { name, impl: null };
      this._t = current;
      current.impl = this._factories[name](url, this._env, cb, this._sid);
    } catch (e) {
      this._closed(1006, String(e), false);
    }
  }

  _opened(name) {
    this._attempt = 0;
    this.transport = name;
    this.connectedSince = new Date(this._env.now());
    const first = this.readyState !== OPEN;
    this.readyState = OPEN;
    this._startHeartbeat();
    this._scheduleRefresh();
    if (first) this.onopen();
  }

  // _scheduleRefresh arms the fetch of a fresh token before the current
  // one expires.
  _scheduleRefresh() {
    this._stopRefresh();
    const exp = this.options.token ? tokenExpiry(this._token) : null;
    if (exp === null) return;
    const left = exp - this._env.now();
    const delay = Math.max(0, left - Math.min(this.options.refreshBefore, left / 2));
    // Timers take at most 2^31-1 ms (24.8 days); longer would fire at once.
    if (delay > MAX_TIMER) {
      this._refreshTimer = this._env.setTimeout(() => this._scheduleRefresh(), MAX_TIMER);
      return;
    }
    this._refreshTimer = this._env.setTimeout(() => this._refresh(), delay);
  }

  _stopRefresh() {
    if (this._refreshTimer !== null) this._env.clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  // _refresh presents a fresh token: a WebSocket in a frame, the other
  // transports by reconnecting with it. When token() fails the connection
  // is kept; the gateway closes it at exp (4403 "token expired") and the
  // client reconnects.
  _refresh() {
    this._refreshTimer = null;
    const t = this._t;
    Promise.resolve().then(() => this.options.token()).then((tok) => {
      if (this._stopped || this._t !== t || !t || !t.impl) return;
      if (t.name === "websocket") {
        this._token = String(tok);
        t.impl.send(JSON.stringify({ token: this._token }));
        this._scheduleRefresh();
        return;
      }
      this._nextToken = String(tok);
      this._stopHeartbeat();
      this._t = null;
      t.impl.close();
      this._connect();
    }, () => {});
  }

  _message(text) {
    this._alive();
    this._restarts = 0; // a gateway that serves us: the drain is behind us
    if (text === HEARTBEAT) {
      this.lastHeartbeat = new Date(this._env.now());
      if (this._pendingPings > 0) { this._pendingPings--; return; } // our own ping's answer
    }
    const f = this._resume ? parseFrame(text) : null;
    if (f === null) return this.onmessage({ data: text });
    // Gap: some messages are lost; lastId stays until the next id arrives.
    if (f.gap) return this.ongap({ since: this.lastId });
    this._save(f.id);
    if (!f.position) this.onmessage({ data: f.data, id: f.id });
  }

  _load() {
    const s = this._env.sessionStorage;
    if (!this.options.storageKey || !s) return null;
    try { return s.getItem(this.options.storageKey); } catch (_) { return null; }
  }

  _save(id) {
    this.lastId = id;
    const s = this._env.sessionStorage;
    if (!this.options.storageKey || !s) return;
    try { s.setItem(this.options.storageKey, id); } catch (_) { /* full or disabled: memory only */ }
  }

  _closed(code, reason, wasOpen) {
    this._stopHeartbeat();
    this._stopRefresh();
    this._t = null;
    this.transport = null;
    if (this._stopped) return;
    // An expired token is not a revoked key: fetch a fresh one.
    const expired = code === 4403 && reason === TOKEN_EXPIRED && this.options.token;
    if (FINAL_CODES.has(code) && !expired) return this._final(code, reason || (code === 4401 ? "unauthorized" : "revoked"));
    const restart = code === RESTART;
    if (wasOpen) {
      this.readyState = CONNECTING;
      this.ondisconnect({ code, reason });
    } else if (!restart) {
      this._tn++; // could not connect with this transport: try the next one
    }
    // A drained connection (1012) comes back after a jittered 0-100 ms (the
    // gateway spreads its closes over its drain period); one that lands on
    // the draining gateway again is refused with 1012 before any frame and
    // waits twice as long each time, however often its connection opened.
    const n = restart ? this._restarts++ : this._attempt++;
    const delay = backoffDelay(n, this.options.baseDelay, this.options.maxDelay, this._env.random);
    this._timer = this._env.setTimeout(() => this._connect(), delay);
  }

  _final(code, reason) {
    this._stopped = true;
    this.readyState = CLOSED;
    this.closeCode = code;
    this.closeReason = reason;
    this.onerror({ code, reason });
    this.onclose({ code, reason, wasClean: false });
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    this._beat = this._env.setInterval(() => {
      this.onheartbeat();
      if (!this.options.autoPing || !this._t) return;
      this._pendingPings++;
      this.send("ping");
      if (this._pingTimer === null) {
        this._pingTimer = this._env.setTimeout(() => {
          // No answer at all since the ping: the connection is dead.
          this._pingTimer = null;
          const t = this._t;
          if (t && t.impl) t.impl.close();
          if (this._t === t) this._closed(4000, "heartbeat timeout", true);
        }, this.options.heartbeatTimeout);
      }
    }, this.options.heartbeatInterval);
  }

  _alive() {
    if (this._pingTimer !== null) {
      this._env.clearTimeout(this._pingTimer);
      this._pingTimer = null;
    }
  }

  _stopHeartbeat() {
    if (this._beat !== null) this._env.clearInterval(this._beat);
    this._beat = null;
    this._alive();
    this._pendingPings = 0;
  }

  /** send sends text to the gateway ("ping" is answered with "heartbeat message"). */
  send(data) {
    if (!this._t || !this._t.impl || this.readyState !== OPEN) return false;
    return this._t.impl.send(data);
  }

  /** close ends the connection for good. */
  close() {
    if (this._stopped) return;
    this._stopped = true;
    this.readyState = CLOSING;
    this._stopHeartbeat();
    this._stopRefresh();
    if (this._timer !== null) this._env.clearTimeout(this._timer);
    const t = this._t;
    this._t = null;
    this.transport = null;
    if (t && t.impl) t.impl.close();
    this.readyState = CLOSED;
    this.closeCode = 1000;
    this.onclose({ code: 1000, reason: "closed by the page", wasClean: true });
  }

  /**
   * setURL changes the URL used by the next (re)connection; a since= in it
   * sets where that connection resumes.
   */
  setURL(url) {
    if (!this._resume) { this.url = url; return; }
    const [bare, since] = splitSince(url);
    this.url = bare;
    if (since !== null) this._save(since);
  }

  /** getURL returns the URL in use. */
  getURL() { return this.url; }
}

WsPubSub.CONNECTING = CONNECTING;
WsPubSub.OPEN = OPEN;
WsPubSub.CLOSING = CLOSING;
WsPubSub.CLOSED = CLOSED;

/**
 * bullet mirrors $.bullet(url, options) of bullet.js. Old pages parse the
 * original frames, so it resumes only when the page asks ({resume: true}).
 */
export function bullet(url, options) { return new WsPubSub(url, Object.assign({ resume: false }, options)); }

globalThis.WsPubSub = WsPubSub;
if (globalThis.jQuery) globalThis.jQuery.bullet = bullet;
export default WsPubSub; // @module-export (removed for /wspubsub.script.js)
