// The demo page's "From a shell" hint: the command that publishes what the
// publish box holds, to the gateway that served the page. Kept apart from
// demo.js (which needs a DOM) so that node --test can check the quoting.

// shellQuote quotes s for a POSIX shell: inside single quotes nothing is
// special but the quote itself, written '\'' (close, escaped quote, reopen).
// Words of safe characters only are left bare, for readability.
export function shellQuote(s) {
  if (s !== "" && /^[A-Za-z0-9._:/@%+=,-]+$/.test(s)) return s;
  return "'" + s.replaceAll("'", "'\\''") + "'";
}

// The origin `wspubsub publish` asks when given no --gateway.
const defaultGateway = { protocol: "http:", port: "8088", hosts: ["127.0.0.1", "localhost"] };

// needsGateway reports whether a page served from origin must tell
// `wspubsub publish` where the gateway is.
export function needsGateway(origin) {
  const u = new URL(origin);
  return !(u.protocol === defaultGateway.protocol && u.port === defaultGateway.port && defaultGateway.hosts.includes(u.hostname));
}

// publishCommand is the shell command publishing data (JSON text; its
// white space folded to keep it on one line) to key through the gateway at
// origin (location.origin).
export function publishCommand(origin, key, data) {
  const words = ["go run ./cmd/wspubsub publish"];
  if (needsGateway(origin)) words.push("--gateway " + shellQuote(origin));
  words.push("--to " + shellQuote(key), shellQuote(data.replace(/\s+/g, " ").trim()));
  return words.join(" ");
}

// modeHint says how the box's messages travel, from the gateway's broker
// ("memory": in-process; "redis": --redis-url).
export function modeHint(broker) {
  return broker === "redis"
    ? "The gateway runs with Redis (--redis-url) and the demo key store: this box publishes to the key above through POST /publish, which records the message and publishes it on Redis, as a backend's PUBLISH or FCALL would."
    : "The gateway runs on embedded defaults (in-process broker, demo key store): publish to the key above.";
}
