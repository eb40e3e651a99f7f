// The web client's logic with no DOM and no I/O: the browser's sans-I/O core.
//
// It mirrors protocol/client_state.py (the Python clients' core) step for step,
// so both can be driven by the same test vectors (tests/vectors/client_state.json):
// per-stream positions that only move forward and build the login's `resume`,
// dedupe of any pushed message whose id is not above its stream's position,
// requests registered by `ref` until answered and written again after a
// reconnect, who is online, and the groups we are a member of.  On top of
// that, `Conversations` keeps what the page shows: messages per conversation
// (merged by id, so a history page and a replay never show one twice), sends
// shown as pending until their ack, and unread counts.  app.js does the I/O.

export const IGNORE = 0; // a duplicate message, a reply nobody waits for
export const EVENT = 1; // hand the frame to the application
export const REPLY = 2; // it answers pending[frame.ref]
export const WELCOMED = 3; // the login succeeded: write resend() now
export const LOGIN_FAILED = 4; // an error answering the login
export const UPLOAD = 5; // a reply to an upload chunk (no ref), matched by upload id
export const OUTCOMES = ["IGNORE", "EVENT", "REPLY", "WELCOMED", "LOGIN_FAILED", "UPLOAD"];

export const STREAM_DM = "dm";
// Closes after which reconnecting would be wrong: normal, login refused, taken over.
export const FINAL_CLOSES = new Set([1000, 4001, 4004]);

export function reconnectsAfter(code) {
  return !FINAL_CLOSES.has(code);
}

/** A message id "<ms>-<seq>" as a pair of BigInts: ids compare as numbers, not text. */
export function idTuple(id) {
  const match = /^(\d+)-(\d+)$/.exec(id);
  if (!match) throw new Error(`not a message id: ${id}`);
  return [BigInt(match[1]), BigInt(match[2])];
}

/** -1, 0 or 1 as id a is older than, the same as, or newer than id b. */
export function compareIds(a, b) {
  const [am, as] = idTuple(a);
  const [bm, bs] = idTuple(b);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

/** The case-insensitive key of a user or group name (an approximation of NFKC(casefold(NFKC(name))). */
export function nameKey(name) {
  return name.normalize("NFKC").toUpperCase().toLowerCase().normalize("NFKC");
}

/** The stream a pushed message belongs to: "*", "#group", or "dm" (our inbox). */
export function streamOf(message) {
  const to = message.to;
  return to[0] === "*" || to[0] === "#" ? to : STREAM_DM;
}

/** A server frame from the text of a WebSocket message; null for anything that is not a typed JSON object. */
export function parseFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.type !== "string") {
    return null;
  }
  return frame;
}

/** What a refused login means to a person. */
export function loginErrorText(code, message) {
  switch (code) {
    case "username_taken":
      return "Username Exists: someone is logged in with that name right now. Pick another name.";
    case "bad_password":
      return "Wrong password for that username.";
    case "invalid_username":
      return `That username is not allowed: ${message || "use letters, digits, _ - . (1-32)"}`;
    case "username_confusable":
      return "That username looks too much like an existing one. Pick another name.";
    case "rate_limited":
      return "Too many attempts. Wait a moment and try again.";
    case "unavailable":
      return "The server is temporarily unavailable. Try again shortly.";
    default:
      return message || `Login refused (${code}).`;
  }
}

/** Delay before reconnect attempt n (0-based): 0.1 s doubling to a 5 s cap, half of it random (as client/chat.py). */
export function backoffDelay(attempt, random = Math.random, cap = 5000) {
  const full = Math.min(cap, 100 * 2 ** Math.min(attempt, 16));
  return full / 2 + random() * (full / 2);
}

/** A binary upload chunk: "CWU1", the 16-byte upload id, the 8-byte big-endian offset, the data (docs §15.2). */
export function encodeChunk(uploadId, offset, data) {
  if (!/^[0-9a-f]{32}$/.test(uploadId)) throw new Error(`not an upload id: ${uploadId}`);
  const out = new Uint8Array(28 + data.length);
  out.set([0x43, 0x57, 0x55, 0x31], 0);
  for (let i = 0; i < 16; i++) out[4 + i] = parseInt(uploadId.slice(2 * i, 2 * i + 2), 16);
  new DataView(out.buffer).setBigUint64(20, BigInt(offset), false);
  out.set(data, 28);
  return out;
}

/** The 64 lowercase hex digits of a SHA-256 digest (an ArrayBuffer from crypto.subtle). */
export function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

// SHA-256 in plain JavaScript, for pages where crypto.subtle is missing: it exists only in a
// "secure context" (https, or http on localhost), and a gateway may be reached over plain http.
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

export function sha256Hex(bytes) {
  const length = bytes.length;
  const padded = new Uint8Array(Math.ceil((length + 9) / 64) * 64);
  padded.set(bytes);
  padded[length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(length / 0x20000000), false);
  view.setUint32(padded.length - 4, (length * 8) >>> 0, false);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + 4 * i, false);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) >>> 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  return Array.from(h, (x) => x.toString(16).padStart(8, "0")).join("");
}

export function humanSize(size) {
  if (size < 1024) return `${size} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = size;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${unit}`;
}

/** The state of one client across all its connections (protocol/client_state.py's ClientState). */
export class ClientCore {
  constructor(refPrefix) {
    this.user = null; // our name as registered (from the last welcome)
    this.session = null; // takes our name back after a drop
    this.welcome = null;
    this.positions = {}; // stream -> id of the last message handed on
    this.duplicates = 0;
    this.online = new Set();
    this.onlineTotal = null; // set when the server capped its list
    this.groups = new Set(); // nameKey of every group we are a member of
    this.pending = new Map(); // ref -> {frame (text), waiter}
    this.uploads = new Map(); // upload id -> hook for its ref-less replies
    this.awaitingWelcome = false;
    this.refPrefix = refPrefix;
    this.refCount = 0;
  }

  nextRef() {
    this.refCount += 1;
    return `${this.refPrefix}-${this.refCount}`;
  }

  /** The login to write on a new socket: our session token and every stream's position. */
  login(user, password, presence = "batched") {
    this.awaitingWelcome = true;
    const frame = { type: "login", v: 1, user, password, presence };
    if (this.session) frame.session = this.session;
    if (Object.keys(this.positions).length) frame.resume = { ...this.positions };
    return frame;
  }

  loginAbandoned() {
    this.awaitingWelcome = false;
  }

  /** Register a request (frame.ref set) until finished(); returns the text to write. */
  request(frame, waiter = null) {
    const text = JSON.stringify(frame);
    this.pending.set(frame.ref, { frame: text, waiter });
    return text;
  }

  watchUpload(upload, hook) {
    this.uploads.set(upload, hook);
    return () => {
      if (this.uploads.get(upload) === hook) this.uploads.delete(upload);
    };
  }

  finished(ref) {
    this.pending.delete(ref);
  }

  /** Every request still unanswered, to write again (same ref) on a new logged-in socket. */
  resend() {
    return Array.from(this.pending.values(), (p) => p.frame);
  }

  /** Apply a server frame (parsed JSON) to the state; returns what the adapter should do with it. */
  receive(frame) {
    const ref = frame.ref ?? null;
    if (ref === null && frame.upload != null && this.uploads.has(frame.upload)) return UPLOAD;
    switch (frame.type) {
      case "welcome":
        if (!this.awaitingWelcome) return IGNORE;
        this.welcomed(frame);
        return WELCOMED;
      case "error":
        if (ref !== null && this.pending.has(ref)) return REPLY;
        if (this.awaitingWelcome) {
          this.awaitingWelcome = false;
          return LOGIN_FAILED;
        }
        return EVENT;
      default:
    }
    if (ref !== null) {
      if (!this.pending.has(ref)) return IGNORE;
      if (frame.type === "group_info") this.groupInfo(frame);
      return REPLY;
    }
    switch (frame.type) {
      case "message":
        return this.firstTime(frame) ? EVENT : IGNORE;
      case "presence":
        if (frame.status === "online") this.online.add(frame.user);
        else this.online.delete(frame.user);
        return EVENT;
      case "presence_batch":
        for (const user of frame.online || []) this.online.add(user);
        for (const user of frame.offline || []) this.online.delete(user);
        return EVENT;
      case "online": // unsolicited snapshot after the server resynchronised
        this.online = new Set(frame.users || []);
        this.onlineTotal = frame.total ?? null;
        return EVENT;
      case "group_event":
        this.groupEvent(frame);
        return EVENT;
      case "ack":
      case "pong":
      case "history":
      case "groups":
      case "upload_ready":
      case "uploaded":
      case "chunk_ack":
        return IGNORE; // a reply without ref: nobody can be waiting for it
      default:
        return EVENT; // a frame type this client does not know: the application may ignore it
    }
  }

  /** Advance the stream position; false for a message at or before it (a duplicate). */
  firstTime(message) {
    const stream = streamOf(message);
    const seen = this.positions[stream];
    if (seen !== undefined && compareIds(message.id, seen) <= 0) {
      this.duplicates += 1;
      return false;
    }
    this.positions[stream] = message.id;
    return true;
  }

  welcomed(welcome) {
    this.awaitingWelcome = false;
    this.welcome = welcome;
    this.user = welcome.user;
    this.session = welcome.session;
    this.online = new Set(welcome.online || []);
    this.onlineTotal = welcome.online_total ?? null;
    for (const [stream, position] of Object.entries(welcome.positions || {})) {
      const mine = this.positions[stream];
      if (mine === undefined || compareIds(position, mine) > 0) this.positions[stream] = position;
    }
    this.groups = new Set(
      Object.keys(welcome.positions || {})
        .filter((s) => s[0] === "#")
        .map((s) => nameKey(s.slice(1))),
    );
  }

  groupInfo(info) {
    const stream = `#${info.group}`;
    if (info.position != null && this.positions[stream] === undefined) this.positions[stream] = info.position;
    if (info.op === "create" || info.op === "join") this.groups.add(nameKey(info.group));
    else if (info.op === "leave") this.groups.delete(nameKey(info.group));
  }

  groupEvent(event) {
    if (this.user === null || nameKey(event.user) !== nameKey(this.user)) return;
    if (event.event === "joined") this.groups.add(nameKey(event.group));
    else if (event.event === "left" || event.event === "removed") this.groups.delete(nameKey(event.group));
  }
}

/** The conversation a message is shown in, as an address: "*", "#Group" or "@peer". */
export function conversationOf(message, me) {
  const to = message.to;
  if (to[0] === "*" || to[0] === "#") return to;
  if (me !== null && nameKey(message.from) === nameKey(me)) return to; // our own DM (to ourselves, or a history page)
  return `@${message.from}`;
}

/**
 * What the page shows: one list of entries per conversation, oldest first.  An entry is a
 * message with an id, or a send of ours still pending (no id, `pending: true`, keyed by ref)
 * until its ack gives it one.  Entries are merged by id, so a history page, a replay and the
 * live copy of one message make one entry; our own broadcast may come back before or after
 * its ack, and both orders end in one entry.
 */
export class Conversations {
  constructor() {
    this.convs = new Map(); // key -> {address, entries, ids: Set, unread, oldest: id|null, exhausted}
    this.active = null; // key of the conversation on screen
  }

  key(address) {
    return address[0] === "*" ? "*" : address[0] + nameKey(address.slice(1));
  }

  get(address) {
    const key = this.key(address);
    let conv = this.convs.get(key);
    if (!conv) {
      conv = { address, entries: [], ids: new Set(), unread: 0, oldest: null, exhausted: false };
      this.convs.set(key, conv);
    }
    return conv;
  }

  /** Add a message (live, replayed or from history); false when it is there already. */
  add(message, me, { live = true } = {}) {
    const conv = this.get(conversationOf(message, me));
    if (conv.ids.has(message.id)) return false;
    conv.ids.add(message.id);
    const entry = { ...message, pending: false };
    insertById(conv.entries, entry);
    if (conv.oldest === null || compareIds(message.id, conv.oldest) < 0) conv.oldest = message.id;
    const mine = me !== null && nameKey(message.from) === nameKey(me);
    if (live && !mine && this.key(conv.address) !== this.active) conv.unread += 1;
    return true;
  }

  /** A send of ours, shown as pending until acked. */
  addPending(ref, to, body, me, file = null) {
    const conv = this.get(to);
    const entry = { ref, id: null, from: me, to, body, ts: Date.now(), pending: true };
    if (file) entry.file = file;
    conv.entries.push(entry);
    return entry;
  }

  /** The ack of a pending send: it becomes a message with its id (unless the echo came first). */
  acked(ref, to, ack) {
    const conv = this.get(to);
    const at = conv.entries.findIndex((e) => e.pending && e.ref === ref);
    if (at < 0) return;
    const [entry] = conv.entries.splice(at, 1);
    if (conv.ids.has(ack.id)) return; // the echo of our broadcast or group message came first
    conv.ids.add(ack.id);
    insertById(conv.entries, { ...entry, id: ack.id, ts: ack.ts, pending: false });
    if (conv.oldest === null || compareIds(ack.id, conv.oldest) < 0) conv.oldest = ack.id;
  }

  /** A send that failed for good: it stays on screen, marked failed. */
  failed(ref, to, reason) {
    const entry = this.get(to).entries.find((e) => e.pending && e.ref === ref);
    if (entry) {
      entry.pending = false;
      entry.failed = reason;
    }
  }

  /** Merge a history page (oldest first) asked for with `limit`; returns how many were new. */
  addHistory(address, messages, me, limit = 50) {
    const conv = this.get(address);
    let added = 0;
    for (const message of messages) if (this.add(message, me, { live: false })) added += 1;
    if (messages.length < limit) conv.exhausted = true; // a short page is the oldest one stored
    return added;
  }

  open(address) {
    const conv = this.get(address);
    this.active = this.key(address);
    conv.unread = 0;
    return conv;
  }

  unreadTotal() {
    let total = 0;
    for (const conv of this.convs.values()) total += conv.unread;
    return total;
  }
}

function insertById(entries, entry) {
  // Entries with ids in id order; pending ones (no id yet) stay at the end.
  let at = entries.length;
  while (at > 0 && (entries[at - 1].id === null || compareIds(entries[at - 1].id, entry.id) > 0)) at -= 1;
  entries.splice(at, 0, entry);
}
