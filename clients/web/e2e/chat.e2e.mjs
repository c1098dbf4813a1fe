// Browser test of the web app in Debian's Chromium (headless, playwright-core): two pages chat
// over WebTransport (nothing blocked) 1:1 and in a group, and see each other's presence; a
// page with WebSocket (and WebTransport) blocked falls back to HTTP streaming and still chats;
// one with HTTP streaming blocked too falls back to long-poll and chats both ways; a large
// group (above messaging.fanout_threshold: NOTICE, then SYNC on the group) reaches every page;
// the server restarts and every page reconnects, showing nothing twice and nothing missing; a
// peer that leaves shows offline; no console errors from the app; a screenshot is saved in
// e2e/artifacts/.
// Run by scripts/test after `cargo build --bin roam` and `npm run build`; exits non-zero on a
// failure. ROAM_BIN overrides the server binary (default target/debug/roam).
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const bin = process.env.ROAM_BIN ?? join(root, "target/debug/roam");
const dist = resolve(here, "../dist");
const artifacts = join(here, "artifacts");
const STEP_MS = 20_000;
const FANOUT_THRESHOLD = 3;

assert.ok(existsSync(bin), `${bin} is missing: cargo build --bin roam first`);
assert.ok(existsSync(join(dist, "index.html")), "the app is not built: npm run build first");

const dir = mkdtempSync(join(tmpdir(), "roam-web-e2e-"));
const config = join(dir, "roam.toml");
const ready = join(dir, "ready.json");
let server;

function writeConfig(clientTcp) {
  writeFileSync(
    config,
    `data = ${JSON.stringify(join(dir, "data"))}\n[edge]\nweb_dir = ${JSON.stringify(dist)}\ndev_login = true\n` +
      // Groups of more than 3 members use read fan-out (NOTICE + SYNC on the group).
      `[messaging]\nfanout_threshold = ${FANOUT_THRESHOLD}\n` +
      `[listen]\nclient_tcp = "${clientTcp}"\nclient_quic = "127.0.0.1:0"\nraw = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ninternal = "127.0.0.1:0"\n`,
  );
}

async function startServer() {
  rmSync(ready, { force: true });
  server = spawn(bin, ["serve", "--config", config, "--ready-file", ready], {
    stdio: ["ignore", "ignore", "inherit"],
    // No inherited ROAM_* variables: the config file alone decides.
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROAM_"))),
      RUST_LOG: process.env.RUST_LOG ?? "warn",
    },
  });
  const deadline = Date.now() + 30_000;
  while (!existsSync(ready)) {
    assert.ok(Date.now() < deadline, "roam serve wrote no ready file in 30 s");
    assert.equal(server.exitCode, null, "roam serve exited before it was ready");
    await new Promise((r) => setTimeout(r, 20)); // polling a file the child writes, with a deadline
  }
  return JSON.parse(readFileSync(ready, "utf8"));
}

async function stopServer() {
  const done = new Promise((r) => server.once("exit", r));
  server.kill("SIGTERM");
  await done;
}

writeConfig("127.0.0.1:0");
let addrs = await startServer();
const port = addrs.client_tcp.split(":").pop();
// Restarts must come back on the same port: the pages' origin.
writeConfig(`127.0.0.1:${port}`);
const base = `https://localhost:${port}`;
const apiKey = readFileSync(join(dir, "data", "api-key"), "utf8").trim();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
  // playwright gives each launch a fresh --user-data-dir of its own (removed at close).
}).catch(async (e) => {
  await stopServer();
  throw e;
});

const problems = [];
/** Browser-side network noise while the server is down on purpose is expected, nothing else. */
let serverDown = false;

async function page(name, { blockWebSocket = false, blockStream = false } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  if (blockStream) {
    // A proxy that buffers responses: HTTP streaming never delivers; long-poll still works.
    await context.route(/\/v1\/stream/, (route) => route.abort("failed"));
  }
  if (blockWebSocket || blockStream) {
    // A proxy that breaks upgrades: WebSocket (and WebTransport) fail, plain HTTP works.
    await context.addInitScript(() => {
      globalThis.WebSocket = class {
        constructor() {
          throw new Error("blocked by the test");
        }
      };
      delete globalThis.WebTransport;
    });
  }
  const p = await context.newPage();
  p.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  p.on("console", (m) => {
    if (m.type() === "info" && process.env.WEB_E2E_VERBOSE) console.log(`${name}: ${m.text()}`);
    if (m.type() !== "error") return;
    const text = m.text();
    const network = /net::ERR_|Failed to load resource|WebSocket connection|WebTransport|Opening handshake/i.test(text);
    // Network errors are expected while the server is down, and for what the test blocks.
    if (network && (serverDown || blockStream)) return;
    problems.push(`${name}: console error: ${text}`);
  });
  await p.goto(`${base}/`);
  await p.getByLabel("Your name").fill(name);
  await p.getByRole("button", { name: "Log in" }).press("Enter");
  await p.locator('#status[data-state="connected"]').waitFor({ timeout: STEP_MS });
  return p;
}

async function open(p, peer) {
  await p.getByLabel("Chat with").fill(peer);
  await p.getByLabel("Chat with").press("Enter");
}

async function say(p, text) {
  await p.getByLabel("Message", { exact: true }).fill(text);
  await p.getByLabel("Message", { exact: true }).press("Enter");
}

/** Waits until the open conversation shows exactly `texts`, in order. */
async function shows(p, texts) {
  await p.waitForFunction(
    (want) => JSON.stringify([...document.querySelectorAll("#messages .text")].map((e) => e.textContent)) === JSON.stringify(want),
    texts,
    { timeout: STEP_MS },
  ).catch(async (e) => {
    const got = await p.$$eval("#messages .text", (els) => els.map((e) => e.textContent));
    throw new Error(`expected ${JSON.stringify(texts)}, shown ${JSON.stringify(got)}: ${e.message}`);
  });
}

/** Waits until `p`'s conversation list shows `peer` online (or offline). */
async function online(p, peer, yes) {
  await p
    .locator(`#convs button[data-conv="${peer}"] .presence[data-online="${yes}"]`)
    .waitFor({ timeout: STEP_MS })
    .catch(async (e) => {
      const shown = await p.locator(`#convs button[data-conv="${peer}"]`).textContent();
      throw new Error(`${peer} not shown ${yes ? "online" : "offline"} (shows ${JSON.stringify(shown)}): ${e.message}`);
    });
}

/** Creates a group through the business API. */
async function group(admin, id, members) {
  const res = await fetch(`${admin}/api/v1/groups`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ id, members }),
  });
  assert.equal(res.status, 201, await res.text());
}

async function transport(p) {
  return p.locator("#status").getAttribute("data-transport");
}

try {
  // 1:1, with nothing blocked: WebTransport.
  const alice = await page("alice");
  const bob = await page("bob");
  assert.equal(await transport(alice), "webtransport");
  assert.equal(await transport(bob), "webtransport");
  await open(alice, "bob");
  await say(alice, "hello bob");
  await shows(alice, ["hello bob"]);
  // Bob sees an unread count on the new conversation, opens it, and alice gets the receipt.
  await bob.locator('#convs button[data-conv="alice"] .unread', { hasText: "1" }).waitFor({ timeout: STEP_MS });
  await bob.locator('#convs button[data-conv="alice"]').click();
  await shows(bob, ["hello bob"]);
  await alice.locator("#messages li.mine .receipt", { hasText: "read" }).waitFor({ timeout: STEP_MS });
  await say(bob, "hi alice");
  await shows(alice, ["hello bob", "hi alice"]);
  // Presence: each sees the other online (they share a conversation now).
  await online(alice, "bob", true);
  await online(bob, "alice", true);

  // A group, made through the business API.
  const admin = `http://${addrs.admin}`;
  await group(admin, "team", ["alice", "bob", "carol"]);
  await open(alice, "group:team");
  await open(bob, "group:team");
  await say(alice, "team: from alice");
  await shows(bob, ["team: from alice"]);
  await say(bob, "team: from bob");
  await shows(alice, ["team: from alice", "team: from bob"]);

  // WebSocket blocked: carol's page falls back to HTTP streaming and still chats.
  const carol = await page("carol", { blockWebSocket: true });
  assert.equal(await transport(carol), "stream");
  await open(carol, "group:team");
  await shows(carol, ["team: from alice", "team: from bob"]);
  await say(carol, "team: from carol");
  await shows(alice, ["team: from alice", "team: from bob", "team: from carol"]);
  await open(carol, "alice");
  await say(carol, "carol to alice");
  await open(alice, "carol");
  await shows(alice, ["carol to alice"]);

  // HTTP streaming blocked too: dave's page falls back to long-poll and chats both ways.
  const dave = await page("dave", { blockStream: true });
  assert.equal(await transport(dave), "poll");
  await open(dave, "alice");
  await say(dave, "dave to alice");
  await open(alice, "dave");
  await shows(alice, ["dave to alice"]);
  await say(alice, "alice to dave");
  await shows(dave, ["dave to alice", "alice to dave"]);

  // A large group (more members than messaging.fanout_threshold): members are told by NOTICE
  // and pull with SYNC on the group — over WebTransport, streaming and long-poll alike.
  await group(admin, "big", ["alice", "bob", "carol", "dave"]);
  for (const p of [alice, bob, carol, dave]) await open(p, "group:big");
  await say(alice, "big: from alice");
  for (const p of [bob, carol, dave]) await shows(p, ["big: from alice"]);
  await say(dave, "big: from dave");
  for (const p of [alice, bob, carol]) await shows(p, ["big: from alice", "big: from dave"]);

  // The server restarts: every page reconnects; what was sent meanwhile arrives once.
  serverDown = true;
  await stopServer();
  await alice.locator('#status:not([data-state="connected"])').waitFor({ timeout: STEP_MS });
  await open(alice, "carol");
  await say(alice, "sent while the server was down");
  addrs = await startServer();
  for (const p of [alice, bob, carol, dave]) await p.locator('#status[data-state="connected"]').waitFor({ timeout: STEP_MS });
  serverDown = false;
  assert.equal(await transport(alice), "webtransport");
  assert.equal(await transport(dave), "poll");
  await shows(alice, ["carol to alice", "sent while the server was down"]);
  await open(carol, "alice");
  await shows(carol, ["carol to alice", "sent while the server was down"]);
  await say(carol, "after the restart");
  await shows(alice, ["carol to alice", "sent while the server was down", "after the restart"]);
  await open(bob, "group:team");
  await say(bob, "team: after the restart");
  await open(alice, "group:team");
  await shows(alice, ["team: from alice", "team: from bob", "team: from carol", "team: after the restart"]);
  // The large group after the restart: sent by the long-poll page, shown once everywhere.
  await say(dave, "big: after the restart");
  const big = ["big: from alice", "big: from dave", "big: after the restart"];
  await shows(dave, big);
  for (const p of [bob, carol]) {
    await open(p, "group:big");
    await shows(p, big);
  }
  await open(alice, "group:big");
  await shows(alice, big);

  // Carol leaves (her HTTP/2 connection closes): alice sees her offline. (A WebTransport
  // page that goes away is noticed only by the QUIC idle timeout: Chromium drops the
  // connection without closing it — see docs/web.md.)
  await online(alice, "carol", true);
  await carol.context().close();
  await online(alice, "carol", false);

  mkdirSync(artifacts, { recursive: true });
  await alice.screenshot({ path: join(artifacts, "chat.png"), fullPage: true });
  assert.deepEqual(problems, [], "no console errors");
  console.log(`web e2e: ok (screenshot ${join(artifacts, "chat.png")})`);
} finally {
  await browser.close().catch(() => undefined);
  if (server && server.exitCode === null) await stopServer();
  rmSync(dir, { recursive: true, force: true });
}
