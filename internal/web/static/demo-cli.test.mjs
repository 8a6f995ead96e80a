// Tests of the demo page's shell hint: node --test internal/web/static/
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { shellQuote, needsGateway, publishCommand, modeHint } from "./demo-cli.js";

test("shellQuote survives a real shell", () => {
  for (const s of [`it's`, `'`, `''a'b'`, `{"msg": "don't"}`, `$HOME \`x\` "q" \\ !`, ``, `plain-word`]) {
    const out = execFileSync("sh", ["-c", "printf %s " + shellQuote(s)]).toString();
    assert.equal(out, s);
  }
  assert.equal(shellQuote(`it's`), `'it'\\''s'`);
  assert.equal(shellQuote("00721b2a-046c"), "00721b2a-046c");
});

test("--gateway is given unless the page is the default gateway's", () => {
  assert.equal(needsGateway("http://localhost:8088"), false);
  assert.equal(needsGateway("http://127.0.0.1:8088"), false);
  assert.equal(needsGateway("http://127.0.0.1:9090"), true);
  assert.equal(needsGateway("https://localhost:8088"), true);
  assert.equal(needsGateway("http://push.example.com"), true);
  assert.equal(publishCommand("http://localhost:8088", "k1", "{}"), "go run ./cmd/wspubsub publish --to k1 '{}'");
  assert.equal(publishCommand("http://127.0.0.1:9090", "k1", `{"a":\n "it's"}`),
    `go run ./cmd/wspubsub publish --gateway http://127.0.0.1:9090 --to k1 '{"a": "it'\\''s"}'`);
});

test("modeHint names the broker", () => {
  assert.match(modeHint("redis"), /--redis-url/);
  assert.doesNotMatch(modeHint("redis"), /embedded defaults/);
  assert.match(modeHint("memory"), /embedded defaults/);
});
