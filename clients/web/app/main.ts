// The Roam web chat app: plain TypeScript on the browser SDK (../src).
import { conversationOf, FALLBACK_ORDER, type Message, Notice_Kind, RoamClient, type TransportName } from "../src/index.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $<HTMLParagraphElement>("status");
const convList = $<HTMLUListElement>("convs");
const list = $<HTMLOListElement>("messages");
const title = $<HTMLHeadingElement>("conv-title");
const composeText = $<HTMLInputElement>("compose-text");
const composeButton = document.querySelector<HTMLButtonElement>("#compose button")!;

interface Conv {
  id: string;
  messages: Map<string, Message>;
  /** Our read cursor (conversation_seq). */
  read: bigint;
  /** The peer's read cursor (receipts; 1:1 only). */
  peerRead: bigint;
  /** Whether older history may exist (scrolling up asks for it). */
  older: boolean;
}

const convs = new Map<string, Conv>();
/** What the server said of each 1:1 peer's presence (absent: it would not say). */
const presence = new Map<string, { online: boolean; lastSeenMs: bigint }>();
/** How often the peers' presence is asked again while connected. */
const PRESENCE_EVERY_MS = 10_000;
let presenceTimer: ReturnType<typeof setInterval> | undefined;
let current: string | undefined;
let client: RoamClient | undefined;
let loadingOlder = false;

function conv(id: string): Conv {
  let c = convs.get(id);
  if (!c) {
    c = { id, messages: new Map(), read: 0n, peerRead: 0n, older: true };
    convs.set(id, c);
    if (!id.startsWith("group:")) queueMicrotask(refreshPresence);
  }
  return c;
}

/** Asks the server who of the 1:1 peers is online (it answers only for people we talk to). */
function refreshPresence(): void {
  if (!client || client.state !== "connected") return;
  const peers = [...convs.keys()].filter((id) => !id.startsWith("group:")).slice(0, 100);
  if (peers.length === 0) return;
  client.presence(peers).then(
    (users) => {
      for (const id of peers) presence.delete(id);
      for (const u of users) presence.set(u.user, { online: u.online, lastSeenMs: u.lastSeenMs });
      renderConvs();
      renderTitle();
    },
    () => undefined, // offline: asked again once connected
  );
}

/** "online", "offline" (with when, if known), or "" when the server would not say. */
function presenceText(id: string): string {
  const p = presence.get(id);
  if (!p) return "";
  if (p.online) return "online";
  if (p.lastSeenMs === 0n) return "offline";
  return `offline, last seen ${new Date(Number(p.lastSeenMs)).toLocaleTimeString()}`;
}

function presenceBadge(id: string): HTMLSpanElement | undefined {
  const p = presence.get(id);
  if (!p) return undefined;
  const badge = document.createElement("span");
  badge.className = "presence";
  badge.dataset.online = String(p.online);
  badge.textContent = p.online ? "online" : "offline";
  badge.title = presenceText(id);
  return badge;
}

function renderTitle(): void {
  if (!current) return;
  const text = presenceText(current);
  title.textContent = text ? `${current} (${text})` : current;
}

function sorted(c: Conv): Message[] {
  return [...c.messages.values()].sort((a, b) => (a.conversationSeq < b.conversationSeq ? -1 : a.conversationSeq > b.conversationSeq ? 1 : 0));
}

function unread(c: Conv): number {
  if (!client) return 0;
  let n = 0;
  for (const m of c.messages.values()) if (m.from !== client.userId && m.conversationSeq > c.read) n++;
  return n;
}

function renderConvs(): void {
  convList.replaceChildren(
    ...[...convs.values()].map((c) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = c.id;
      b.dataset.conv = c.id;
      const badge = presenceBadge(c.id);
      if (badge) b.append(" ", badge);
      if (c.id === current) b.setAttribute("aria-current", "true");
      const n = c.id === current ? 0 : unread(c);
      if (n > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(n);
        badge.setAttribute("aria-label", `${n} unread`);
        b.append(badge);
      }
      b.addEventListener("click", () => openConv(c.id));
      li.append(b);
      return li;
    }),
  );
}

function renderMessages(keepBottom = true): void {
  if (!current || !client) return;
  const c = conv(current);
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren(
    ...sorted(c).map((m) => {
      const li = document.createElement("li");
      li.dataset.id = String(m.id);
      const mine = m.from === client!.userId;
      if (mine) li.className = "mine";
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = `${m.from}:`;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = new TextDecoder().decode(m.content);
      li.append(from, text);
      if (mine && !c.id.startsWith("group:") && m.conversationSeq <= c.peerRead) {
        const r = document.createElement("span");
        r.className = "receipt";
        r.textContent = "read";
        li.append(r);
      }
      return li;
    }),
  );
  if (keepBottom && atBottom) list.scrollTop = list.scrollHeight;
  else list.scrollTop = list.scrollHeight - fromBottom;
}

function markRead(): void {
  if (!current || !client || client.state !== "connected") return;
  const c = conv(current);
  const last = sorted(c).at(-1);
  if (!last || last.conversationSeq <= c.read) return;
  const peer = current;
  client.read(peer, last.conversationSeq).then(
    (reply) => {
      const cc = conv(peer);
      if (reply.seq > cc.read) cc.read = reply.seq;
      renderConvs();
    },
    () => undefined, // retried on the next message or when the conversation is opened again
  );
}

async function loadOlder(): Promise<void> {
  if (!current || !client || loadingOlder || client.state !== "connected") return;
  const c = conv(current);
  if (!c.older) return;
  loadingOlder = true;
  try {
    const first = sorted(c)[0];
    const page = await client.history(c.id, first ? first.conversationSeq : 0n, 30);
    for (const m of page.messages) c.messages.set(String(m.id), m);
    c.older = page.hasMore;
    if (c.id === current) renderMessages(false);
  } catch {
    /* offline: scrolling up again retries */
  } finally {
    loadingOlder = false;
  }
}

function openConv(id: string): void {
  current = id;
  renderTitle();
  composeText.disabled = false;
  composeButton.disabled = false;
  renderConvs();
  list.scrollTop = list.scrollHeight;
  renderMessages();
  list.scrollTop = list.scrollHeight;
  markRead();
  if (conv(id).messages.size < 30) void loadOlder();
  composeText.focus();
}

function onMessage(m: Message): void {
  if (!client) return;
  const id = conversationOf(m, client.userId);
  const c = conv(id);
  c.messages.set(String(m.id), m);
  if (m.from === client.userId && m.conversationSeq > c.read) c.read = m.conversationSeq;
  if (id === current) {
    renderMessages();
    if (document.visibilityState === "visible") markRead();
  }
  renderConvs();
}

function start(token: string, name: string): void {
  const params = new URLSearchParams(location.search);
  const wanted = (params.get("transports") ?? "").split(",").filter((t): t is TransportName => (FALLBACK_ORDER as readonly string[]).includes(t));
  let deviceId = localStorage.getItem(`roam-device-${name}`);
  if (!deviceId) {
    deviceId = `web-${Math.random().toString(36).slice(2, 10)}`;
    localStorage.setItem(`roam-device-${name}`, deviceId);
  }
  client = new RoamClient({
    baseUrl: location.origin,
    token,
    deviceId,
    transports: wanted.length > 0 ? wanted : FALLBACK_ORDER,
  });
  client.on("message", onMessage);
  client.on("attempt", (name, error) => {
    if (error) console.info(`roam: ${name} failed: ${error}`);
  });
  client.on("state", (state, transport, detail) => {
    status.dataset.state = state;
    status.dataset.transport = state === "connected" ? (transport ?? "") : "";
    status.textContent =
      state === "connected" ? `Connected as ${client!.userId} via ${transport}` : `${state[0]!.toUpperCase()}${state.slice(1)}${detail ? ` (${detail})` : ""}`;
    clearInterval(presenceTimer);
    if (state === "connected") {
      markRead();
      refreshPresence();
      presenceTimer = setInterval(refreshPresence, PRESENCE_EVERY_MS);
    }
  });
  client.on("notice", (n) => {
    if (n.kind === Notice_Kind.RECEIPT) {
      const c = conv(n.peer);
      if (n.seq > c.peerRead) c.peerRead = n.seq;
      if (n.peer === current) renderMessages();
    } else if (n.kind === Notice_Kind.READ) {
      const c = conv(n.peer);
      if (n.seq > c.read) c.read = n.seq;
      renderConvs();
    }
  });
  $<HTMLFormElement>("login").hidden = true;
  $<HTMLDivElement>("chat").hidden = false;
  client.connect();
  $<HTMLInputElement>("open-peer").focus();
}

$<HTMLFormElement>("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $<HTMLInputElement>("login-name").value.trim();
  const error = $<HTMLParagraphElement>("login-error");
  error.textContent = "";
  const res = await fetch("/v1/dev-login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: name }),
  }).catch(() => undefined);
  if (!res) {
    error.textContent = "The server cannot be reached.";
    return;
  }
  const body = (await res.json().catch(() => ({}))) as { token?: string; error?: { message?: string } };
  if (res.status === 404) {
    error.textContent = "The development login is off on this server: tokens come from your backend.";
    return;
  }
  if (!res.ok || !body.token) {
    error.textContent = body.error?.message ?? `Login failed (HTTP ${res.status}).`;
    return;
  }
  start(body.token, name);
});

$<HTMLFormElement>("open").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>("open-peer");
  const peer = input.value.trim();
  if (!peer) return;
  input.value = "";
  conv(peer);
  openConv(peer);
});

$<HTMLFormElement>("compose").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = composeText.value;
  if (!text || !current || !client) return;
  composeText.value = "";
  client.send(current, text, "text/plain").catch((e: Error) => {
    status.textContent = `Not sent: ${e.message}`;
  });
});

list.addEventListener("scroll", () => {
  if (list.scrollTop < 40) void loadOlder();
});
document.addEventListener("visibilitychange", markRead);
// Leaving the page ends the connection at once (WebTransport and WebSocket say goodbye), so
// peers see this user go offline now rather than when the server's idle timeout notices.
window.addEventListener("pagehide", () => client?.close());
