// The web client's I/O and controller: the WebSocket, reconnects, requests, pushed frames, rendering.
// files.js adds uploads and downloads, controls.js wires the page's forms, ui.js builds the DOM.
//
// What the client knows and decides is in core.js (tested without a browser); this module is the
// adapter, as client/connection.py is for the Python core.  Which gateway it talks to: the page's
// own origin (ws(s)://<host>/), which behind the compose load balancer is any live gateway; or, when
// the page is opened with ?gateways=ws://a:9000,ws://b:9000, those URLs in turn, one more on every
// reconnect (how a page fails over between gateways that have no balancer in front of them).

import {
  ClientCore, Conversations, EVENT, LOGIN_FAILED, REPLY, UPLOAD, WELCOMED,
  backoffDelay, conversationOf, loginErrorText, nameKey, parseFrame, reconnectsAfter,
} from "./core.js";
import { wireControls } from "./controls.js";
import { FileMethods } from "./files.js";
import {
  $, announce, fileLabel, messageItem, notify, renderConversations, renderInvitations, renderOnline, setStatus,
  showChat, showLogin, title,
} from "./ui.js";

const LOGIN_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 20000;
const RETRIED = new Set(["rate_limited", "unavailable", "internal"]); // a send is retried after these

function gatewayUrls() {
  const listed = new URLSearchParams(location.search).get("gateways");
  if (listed) {
    const urls = listed.split(",").map((u) => u.trim()).filter((u) => /^wss?:\/\/[^/]+/.test(u));
    if (urls.length) return urls;
  }
  return [`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`];
}

function randomPrefix() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return `w${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

class Chat {
  constructor() {
    this.core = new ClientCore(randomPrefix());
    this.convs = new Conversations();
    this.urls = gatewayUrls();
    this.urlIndex = 0;
    this.attempt = 0;
    this.ws = null;
    this.loggedIn = false; // the current socket got its welcome
    this.everWelcomed = false;
    this.credentials = null;
    this.invitations = new Map(); // group key -> {group, by}
    this.blobUrls = new Map(); // file id -> object URL
    this.stopped = true;
    this.reconnectTimer = null;
    this.loginTimer = null;
    this.groupInfo = new Map(); // group key -> last group_info / summary
    this.onReconnected = [];
    this.counts = { welcomes: 0 };
    this.retryRefused = false;
  }

  // -- connection ------------------------------------------------------------

  start(user, password) {
    this.credentials = { user, password };
    this.stopped = false;
    this.connect();
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    const url = this.urls[this.urlIndex % this.urls.length];
    setStatus(this.everWelcomed ? `Reconnecting to ${url}…` : `Connecting to ${url}…`);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      this.scheduleReconnect(null);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const { user, password } = this.credentials;
      ws.send(JSON.stringify(this.core.login(user, password, "batched")));
      this.loginTimer = setTimeout(() => {
        if (this.ws === ws && !this.loggedIn) {
          this.core.loginAbandoned();
          ws.close();
        }
      }, LOGIN_TIMEOUT_MS);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      const frame = parseFrame(event.data);
      if (frame) this.receive(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearTimeout(this.loginTimer);
      this.ws = null;
      const wasLoggedIn = this.loggedIn;
      this.loggedIn = false;
      this.core.loginAbandoned();
      for (const hook of this.core.uploads.values()) hook({ type: "disconnected" });
      if (this.stopped) return;
      if (event.code === 4004) {
        this.stop("Logged in elsewhere: this page stopped (your newer login holds the name).");
        return;
      }
      if (this.retryRefused) {
        this.retryRefused = false; // a reconnect's login was turned away for now: try again later
      } else if (!reconnectsAfter(event.code)) {
        return; // a refused login (receive() has shown why), or our own close
      }
      this.scheduleReconnect(wasLoggedIn ? 0 : null);
    };
  }

  scheduleReconnect(resetTo) {
    if (this.stopped) return;
    if (resetTo !== null) this.attempt = resetTo;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.urlIndex += 1; // the next gateway, if there are several
    setStatus(`Disconnected. Reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  stop(reason) {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.loginTimer);
    const ws = this.ws;
    this.ws = null;
    this.loggedIn = false;
    if (ws) ws.close(1000);
    setStatus(reason);
  }

  write(data) {
    if (this.ws && this.loggedIn && this.ws.readyState === WebSocket.OPEN) this.ws.send(data);
  }

  /** A request: resolved with its reply, rejected with its error; written again after each reconnect. */
  request(frame, { timeout = REQUEST_TIMEOUT_MS } = {}) {
    frame.ref = frame.ref || this.core.nextRef(); // a retried send keeps its ref: the server acks it once
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      if (timeout) {
        waiter.timer = setTimeout(() => {
          this.core.finished(frame.ref);
          reject(Object.assign(new Error("no answer from the server"), { code: "timeout" }));
        }, timeout);
      }
      this.write(this.core.request(frame, waiter));
    });
  }

  receive(frame) {
    const outcome = this.core.receive(frame);
    switch (outcome) {
      case WELCOMED:
        this.welcomed(frame);
        return;
      case LOGIN_FAILED:
        this.loginFailed(frame);
        return;
      case REPLY: {
        const pending = this.core.pending.get(frame.ref);
        this.core.finished(frame.ref);
        clearTimeout(pending.waiter.timer);
        if (frame.type === "error") pending.waiter.reject(Object.assign(new Error(frame.message), frame));
        else pending.waiter.resolve(frame);
        return;
      }
      case UPLOAD:
        this.core.uploads.get(frame.upload)(frame);
        return;
      case EVENT:
        this.event(frame);
        return;
      default:
    }
  }

  welcomed(welcome) {
    clearTimeout(this.loginTimer);
    this.loggedIn = true;
    this.attempt = 0;
    this.counts.welcomes += 1;
    const first = !this.everWelcomed;
    this.everWelcomed = true;
    setStatus(`Connected to ${welcome.node}`);
    document.body.dataset.node = welcome.node;
    document.body.dataset.welcomes = String(this.counts.welcomes);
    for (const data of this.core.resend()) this.ws.send(data);
    const lost = Object.entries(welcome.recovered || {}).filter(([, ok]) => !ok).map(([s]) => s);
    for (const stream of lost) {
      const address = stream === "dm" ? null : stream;
      if (address) this.system(address, "Some older messages were trimmed from the server and could not be replayed.");
    }
    if (first) showChat(welcome.user);
    this.refreshGroups();
    this.renderSide();
    if (first) this.open("*");
    for (const callback of this.onReconnected.splice(0)) callback();
  }

  loginFailed(error) {
    clearTimeout(this.loginTimer);
    const retry = this.everWelcomed && (error.code === "username_taken" || error.code === "unavailable" ||
      error.code === "rate_limited");
    if (retry) {
      // Our old connection may still hold the name, or Redis is away: try again with backoff.
      this.retryRefused = true;
      setStatus(`Reconnect refused (${error.code}); retrying…`);
      if (this.ws) this.ws.close();
      return;
    }
    this.stop("Not connected");
    showLogin(loginErrorText(error.code, error.message));
  }

  // -- pushed frames --------------------------------------------------------

  event(frame) {
    switch (frame.type) {
      case "message":
        this.message(frame);
        break;
      case "presence":
      case "presence_batch":
      case "online":
        this.renderSide();
        break;
      case "group_event":
        this.groupEvent(frame);
        break;
      case "error":
        setStatus(`Server: ${frame.message}`);
        break;
      default:
    }
  }

  message(message) {
    const me = this.core.user;
    if (!this.convs.add(message, me)) return;
    const conv = this.convs.get(conversationOf(message, me));
    const address = conv.address;
    if (this.convs.key(address) === this.convs.active) {
      if (conv.entries[conv.entries.length - 1].id === message.id) this.appendMessage(conv.entries[conv.entries.length - 1]);
      else this.renderMessages(); // older than something shown, or pending sends below it
    }
    this.renderSide();
    if (me !== null && nameKey(message.from) !== nameKey(me)) {
      const text = message.body || (message.file ? `sent ${fileLabel(message.file)}` : "");
      announce(`New message in ${title(address)} from ${message.from}: ${text}`);
      notify(message.from, address, text);
    }
  }

  groupEvent(event) {
    const me = this.core.user;
    const mine = me !== null && nameKey(event.user) === nameKey(me);
    if (event.event === "invited" && mine) {
      if (!this.core.groups.has(nameKey(event.group))) {
        this.invitations.set(nameKey(event.group), { group: event.group, by: event.by });
        announce(`${event.by} invited you to #${event.group}`);
      }
    } else if ((event.event === "removed" || event.event === "left") && mine) {
      this.system(`#${event.group}`, "You are no longer a member of this group.");
    } else {
      const text = {
        joined: `${event.user} joined`,
        left: `${event.user} left`,
        invited: `${event.by} invited ${event.user}`,
        removed: `${event.by} removed ${event.user}`,
        owner: `${event.user} is now the owner`,
        updated: `${event.user} made the group ${event.invite_only ? "invite only" : "open"}`,
      }[event.event];
      if (text && this.core.groups.has(nameKey(event.group))) this.system(`#${event.group}`, text);
    }
    this.renderSide();
  }

  system(address, body) {
    const conv = this.convs.get(address);
    conv.entries.push({ system: true, body, id: null, pending: false });
    if (this.convs.key(address) === this.convs.active) this.renderMessages();
  }

  // -- requests from the page ------------------------------------------------

  async send(to, body, file = null) {
    const me = this.core.user;
    const frame = { type: "send", to, body };
    if (file) frame.file = file;
    let promise = this.request(frame, { timeout: 0 }); // pending until acked, across reconnects
    this.convs.addPending(frame.ref, to, body, me, file);
    this.renderMessages();
    for (let attempt = 0; ; attempt++) {
      try {
        const ack = await promise;
        this.convs.acked(frame.ref, to, ack);
        break;
      } catch (err) {
        // Too fast, or Redis away: the same frame again later, same ref (stored at most once).
        if (!RETRIED.has(err.code) || attempt >= 8) {
          this.convs.failed(frame.ref, to, err.message || err.code);
          break;
        }
        const wait = err.retry_after ? err.retry_after * 1000 : backoffDelay(attempt + 3);
        await new Promise((resolve) => setTimeout(resolve, wait));
        promise = this.request(frame, { timeout: 0 });
      }
    }
    if (this.convs.key(to) === this.convs.active) this.renderMessages();
  }

  async loadOlder(address) {
    const conv = this.convs.get(address);
    const frame = { type: "history", conv: address, limit: 50 };
    if (conv.oldest) frame.before = conv.oldest;
    const reply = await this.request(frame);
    this.convs.addHistory(address, reply.messages, this.core.user, frame.limit);
    conv.loaded = true;
    if (this.convs.key(address) === this.convs.active) this.renderMessages({ keepScroll: true });
  }

  async group(op, group, extra = {}) {
    const reply = await this.request({ type: "group", op, group, ...extra });
    this.groupInfo.set(nameKey(reply.group), reply);
    if (op === "create" || op === "join") {
      this.invitations.delete(nameKey(reply.group));
      this.convs.get(`#${reply.group}`);
    }
    this.renderSide();
    return reply;
  }

  async refreshGroups() {
    try {
      const reply = await this.request({ type: "groups" });
      for (const g of reply.groups) {
        this.groupInfo.set(nameKey(g.group), { ...this.groupInfo.get(nameKey(g.group)), ...g });
        this.convs.get(`#${g.group}`);
      }
      this.renderSide();
    } catch (err) {
      setStatus(`Could not list your groups: ${err.message}`);
    }
  }

  // -- rendering --------------------------------------------------------------

  open(address) {
    const conv = this.convs.open(address);
    $("conv-title").textContent = title(conv.address);
    const group = conv.address[0] === "#";
    $("group-tools").hidden = !group;
    $("group-members-list").hidden = true;
    if (group) {
      const info = this.groupInfo.get(nameKey(conv.address.slice(1)));
      $("group-private").checked = Boolean(info && info.invite_only);
    }
    this.renderMessages();
    this.renderSide();
    if (!conv.loaded) this.loadOlder(conv.address).catch((err) => setStatus(`History: ${err.message}`));
  }

  activeAddress() {
    const conv = this.convs.convs.get(this.convs.active);
    return conv ? conv.address : "*";
  }

  renderMessages({ keepScroll = false } = {}) {
    const list = $("messages");
    const conv = this.convs.convs.get(this.convs.active);
    if (!conv) return;
    const fromBottom = list.scrollHeight - list.scrollTop;
    list.replaceChildren(...conv.entries.map((e) => messageItem(e, this.core.user, (f) => this.fileView(f))));
    $("older").disabled = Boolean(conv.exhausted);
    $("older").textContent = conv.exhausted ? "No older messages" : "Load older messages";
    // After a page of older messages, keep what was on screen in place; otherwise show the newest.
    list.scrollTop = keepScroll ? list.scrollHeight - fromBottom : list.scrollHeight;
  }

  /** The newest entry of the open conversation, added without rebuilding the list (the common case). */
  appendMessage(entry) {
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(messageItem(entry, this.core.user, (f) => this.fileView(f)));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  renderSide() {
    renderConversations(this.convs, this.core.groups, (a) => this.open(a));
    renderOnline(this.core.online, this.core.onlineTotal, this.core.user, (a) => this.open(a));
    renderInvitations(this.invitations, (g) => this.joinGroup(g));
    const unread = this.convs.unreadTotal();
    document.title = unread ? `(${unread}) Chinwag` : "Chinwag";
  }

  async joinGroup(name) {
    $("group-error").textContent = "";
    try {
      const info = await this.group("join", name);
      this.open(`#${info.group}`);
    } catch (err) {
      $("group-error").textContent = `Could not join ${name}: ${err.message}`;
    }
  }
}

Object.assign(Chat.prototype, FileMethods);

wireControls(() => new Chat());
