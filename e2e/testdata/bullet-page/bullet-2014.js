/*
  A stand-in for the 2014 bullet.js (jQuery plugin) used by the original
  ws_pub_sub demo page, written for wspubsub's tests from the behaviour
  recorded in shared/seed/NOTES.md — the original file is not reachable from
  the build machines and its code is not copied into this repository.

  What it reproduces, because each detail broke a 2014 page somewhere:
  - $.bullet(url, options) on one URL for every transport; ws:// is rewritten
    to http:// for the HTTP transports;
  - transports tried in order WebSocket → EventSource → XHR long-polling,
    moving to the next when one fails while connecting;
  - polls are jQuery $.ajax GETs with cache:false (jQuery appends
    &_=<timestamp>) and header X-Socket-Transport: xhrPolling; a success with
    a body is one message, `data.length` is read without a guard (jQuery 1.9
    hands `undefined` for a 204 and this throws), the next poll is 100 ms
    later;
  - send() is a synchronous form-urlencoded XHR POST of the raw text; a
    non-empty reply body is delivered to onmessage;
  - reconnect delay starts at 80 ms and doubles up to 10 s; onheartbeat fires
    every 20 s on WebSocket (the page sends "ping").
*/
(function ($) {
  $.bullet = function (url, options) {
    options = options || {};
    var CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
    var httpURL = function () { return url.replace(/^ws/, 'http'); };

    function post(kind, onmessage) {
      return function (data) {
        $.ajax({ async: false, cache: false, type: 'POST', url: httpURL(), data: data, dataType: 'text',
          contentType: 'application/x-www-form-urlencoded; charset=utf-8',
          headers: { 'X-Socket-Transport': kind },
          success: function (reply) { if (reply.length !== 0) { onmessage({ data: reply }); } } });
        return true;
      };
    }

    var transports = [];
    if (!options.disableWebSocket && window.WebSocket) {
      transports.push({ heart: true, open: function () { return new WebSocket(url); } });
    }
    if (!options.disableEventSource && window.EventSource) {
      transports.push({ heart: false, open: function () {
        var es = new EventSource(httpURL());
        var fake = { readyState: CONNECTING };
        es.onopen = function () { fake.readyState = OPEN; fake.onopen(); };
        es.onmessage = function (e) { fake.onmessage(e); };
        es.onerror = function () { es.close(); fake.readyState = CLOSED; fake.onclose(); };
        fake.send = post('eventsource', function (e) { fake.onmessage(e); });
        fake.close = function () { es.close(); fake.readyState = CLOSED; fake.onclose(); };
        return fake;
      } });
    }
    if (!options.disableXHRPolling) {
      transports.push({ heart: false, open: function () {
        var fake = { readyState: CONNECTING }, xhr, timer;
        function poll() {
          xhr = $.ajax({ type: 'GET', cache: false, url: httpURL(), dataType: 'text', data: {},
            headers: { 'X-Socket-Transport': 'xhrPolling' },
            success: function (data) {
              if (fake.readyState === CONNECTING) { fake.readyState = OPEN; fake.onopen(); }
              if (data.length !== 0) { fake.onmessage({ data: data }); }
              if (fake.readyState === OPEN) { timer = setTimeout(poll, 100); }
            },
            error: function () { fake.readyState = CLOSED; fake.onerror(); } });
        }
        fake.send = post('xhrPolling', function (e) { fake.onmessage(e); });
        fake.close = function () { fake.readyState = CLOSED; if (xhr) { xhr.abort(); } clearTimeout(timer); fake.onclose(); };
        timer = setTimeout(poll, 100);
        return fake;
      } });
    }

    var stream = { onopen: function () {}, onmessage: function () {}, ondisconnect: function () {},
      onclose: function () {}, onheartbeat: function () {} };
    var tn = 0, delay = 80, state = CLOSED, transport = null, heartbeat = null, closedByPage = false;

    function init() {
      if (tn >= transports.length) { tn = 0; delay = 80; stream.ondisconnect(); setTimeout(init, 10000); return; }
      state = CONNECTING;
      var t = transports[tn], done = false;
      transport = t.open();
      transport.onopen = function () {
        delay = 80;
        if (t.heart) { heartbeat = setInterval(function () { stream.onheartbeat(); }, 20000); }
        if (state !== OPEN) { state = OPEN; stream.onopen(); }
      };
      transport.onmessage = function (e) { stream.onmessage(e); };
      transport.onclose = transport.onerror = function () {
        if (done) { return; }
        done = true;
        clearInterval(heartbeat);
        if (closedByPage) { state = CLOSED; stream.onclose(); return; }
        if (state === CONNECTING) { tn++; }
        state = CONNECTING;
        delay = Math.min(delay * 2, 10000);
        setTimeout(init, delay);
      };
    }
    init();

    stream.send = function (data) { return transport && transport.send(data); };
    stream.close = function () { closedByPage = true; state = CLOSING; if (transport) { transport.close(); } };
    stream.setURL = function (u) { url = u; };
    return stream;
  };
})(jQuery);
