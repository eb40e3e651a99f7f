// The DOM side of the web client: building the page's lists from the state in core.js.
// No protocol logic here; app.js calls these with what to show and the handlers to wire.

import { humanSize, nameKey } from "./core.js";

export const $ = (id) => document.getElementById(id);

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function title(address) {
  if (address === "*") return "Everyone";
  return address; // "#Devs" or "@bob"
}

export function time(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** The conversation list: Everyone first, then groups, then people, each with its unread count. */
export function renderConversations(conversations, groups, onOpen) {
  const list = $("conversations");
  const convs = Array.from(conversations.convs.values()).filter(
    (c) => c.address[0] !== "#" || groups.has(nameKey(c.address.slice(1))),
  );
  if (!convs.some((c) => c.address === "*")) convs.push(conversations.get("*"));
  const rank = (c) => (c.address === "*" ? 0 : c.address[0] === "#" ? 1 : 2);
  convs.sort((a, b) => rank(a) - rank(b) || a.address.localeCompare(b.address));
  list.replaceChildren(
    ...convs.map((conv) => {
      const key = conversations.key(conv.address);
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            "data-conv": conv.address,
            "aria-current": key === conversations.active ? "true" : "false",
            onclick: () => onOpen(conv.address),
          },
          el("span", { text: title(conv.address) }),
          conv.unread
            ? el("span", { class: "badge", "data-unread": String(conv.unread) }, String(conv.unread),
              el("span", { class: "visually-hidden", text: " unread" }))
            : null,
        ),
      );
    }),
  );
}

export function renderOnline(online, total, me, onOpen) {
  const names = Array.from(online).sort();
  $("online-count").textContent = total !== null ? `(${names.length} of ${total})` : `(${names.length})`;
  $("online").replaceChildren(
    ...names.map((name) =>
      el(
        "li",
        {},
        el("button", {
          type: "button",
          class: "link",
          "data-user": name,
          "aria-label": name === me ? `${name} (you)` : `Message ${name}`,
          text: name === me ? `${name} (you)` : name,
          onclick: () => onOpen(`@${name}`),
        }),
      ),
    ),
  );
}

export function renderInvitations(invitations, onJoin) {
  $("invitations").replaceChildren(
    ...Array.from(invitations.values()).map((inv) =>
      el(
        "li",
        { "data-invite": inv.group },
        el("span", { text: `${inv.by} invited you to #${inv.group}` }),
        el("button", { type: "button", text: "Join", "aria-label": `Join #${inv.group}`, onclick: () => onJoin(inv.group) }),
      ),
    ),
  );
}

/** One message (or a pending send, or a system line) as a list item. */
export function messageItem(entry, me, fileView) {
  if (entry.system) return el("li", { class: "system", text: entry.body });
  const mine = me !== null && nameKey(entry.from) === nameKey(me);
  const classes = [mine ? "mine" : "", entry.pending ? "pending" : "", entry.failed ? "failed" : ""].join(" ").trim();
  const item = el(
    "li",
    { class: classes || undefined, "data-id": entry.id || undefined, "data-ref": entry.ref || undefined },
    el("span", { class: "meta", text: time(entry.ts) }),
    el("span", { class: "from", text: entry.from }),
    entry.body ? el("span", { class: "body", text: entry.body }) : null,
  );
  if (entry.file) item.append(fileView(entry.file));
  if (entry.pending) item.append(el("span", { class: "state", text: "sending…" }));
  if (entry.failed) item.append(el("span", { class: "state", text: `not sent: ${entry.failed}` }));
  return item;
}

export function fileLabel(file) {
  return `${file.name} (${humanSize(file.size)})`;
}

export function setStatus(text) {
  $("status").textContent = text;
}

export function announce(text) {
  const region = $("announce");
  region.append(el("p", { text }));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

export function notify(from, address, text) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const n = new Notification(address === `@${from}` ? from : `${from} in ${title(address)}`, { body: text });
    n.onclick = () => window.focus();
  } catch {
    // some browsers only allow notifications from a service worker
  }
}

export function showChat(user) {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("me").textContent = user;
  $("logout").hidden = false;
  $("notify").hidden = !("Notification" in window) || Notification.permission !== "default";
  $("composer-input").focus();
}

export function showLogin(error) {
  $("login-view").hidden = false;
  $("chat-view").hidden = true;
  $("logout").hidden = true;
  $("login-error").textContent = error || "";
  $("login-submit").disabled = false;
  $("login-user").focus();
}
