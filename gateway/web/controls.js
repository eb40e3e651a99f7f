// The page's controls: the forms and buttons, wired to a Chat (app.js).  No protocol logic here.

import { $, showLogin, setStatus } from "./ui.js";

function plainName(text, prefix) {
  const name = text.trim();
  return name.startsWith(prefix) ? name.slice(1) : name;
}

export function wireControls(newChat) {
  let chat = null;
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("login-user").value.trim();
    const password = $("login-password").value;
    if (!user || !password) {
      $("login-error").textContent = "Enter a username and a password.";
      return;
    }
    $("login-error").textContent = "";
    $("login-submit").disabled = true;
    if (chat) chat.stop("Not connected");
    chat = newChat();
    window.chinwag = chat; // for tests and the curious: the page's state
    chat.start(user, password);
  });
  $("logout").addEventListener("click", () => {
    if (chat) chat.stop("Logged out");
    chat = null;
    showLogin("");
  });
  $("notify").addEventListener("click", async () => {
    await Notification.requestPermission();
    $("notify").hidden = Notification.permission !== "default";
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    const body = input.value;
    if (!chat || !body.trim()) return;
    input.value = "";
    chat.send(chat.activeAddress(), body);
  });
  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("file-input").addEventListener("change", async () => {
    const input = $("file-input");
    const file = input.files && input.files[0];
    if (!chat || !file) return;
    const to = chat.activeAddress();
    const bar = $("upload-progress");
    $("composer-error").textContent = "";
    bar.hidden = false;
    bar.value = 0;
    try {
      const ref = await chat.upload(file, (fraction) => { bar.value = fraction; });
      await chat.send(to, "", ref);
    } catch (err) {
      $("composer-error").textContent = `Could not send ${file.name}: ${err.message}`;
    } finally {
      bar.hidden = true;
      input.value = "";
    }
  });
  $("older").addEventListener("click", () => {
    if (chat) chat.loadOlder(chat.activeAddress()).catch((err) => setStatus(`History: ${err.message}`));
  });
  $("dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = plainName($("dm-user").value, "@");
    if (chat && name) {
      chat.open(`@${name}`);
      $("dm-user").value = "";
      $("composer-input").focus();
    }
  });
  $("group-create").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = plainName($("group-create-name").value, "#");
    if (!chat || !name) return;
    $("group-error").textContent = "";
    try {
      const info = await chat.group("create", name, { invite_only: $("group-create-private").checked });
      $("group-create-name").value = "";
      chat.open(`#${info.group}`);
    } catch (err) {
      $("group-error").textContent = `Could not create ${name}: ${err.message}`;
    }
  });
  $("group-join").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = plainName($("group-join-name").value, "#");
    if (!chat || !name) return;
    await chat.joinGroup(name);
    $("group-join-name").value = "";
  });
  const groupOp = async (op, extra = {}) => {
    const address = chat.activeAddress();
    $("group-error").textContent = "";
    try {
      return await chat.group(op, address.slice(1), extra);
    } catch (err) {
      $("group-error").textContent = `${op}: ${err.message}`;
      return null;
    }
  };
  $("group-members").addEventListener("click", async () => {
    const info = await groupOp("members");
    if (!info) return;
    const box = $("group-members-list");
    box.textContent = `Members: ${info.members.join(", ")} (owner ${info.owner}${info.invite_only ? ", invite only" : ""})`;
    box.hidden = false;
  });
  $("group-invite").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = plainName($("group-invite-user").value, "@");
    if (!user) return;
    if (await groupOp("invite", { user })) $("group-invite-user").value = "";
  });
  $("group-private").addEventListener("change", async () => {
    const box = $("group-private");
    if (!(await groupOp("set", { invite_only: box.checked }))) box.checked = !box.checked; // only the owner may
  });
  $("group-leave").addEventListener("click", async () => {
    if (await groupOp("leave")) chat.open("*");
  });
  $("login-user").focus();
}
