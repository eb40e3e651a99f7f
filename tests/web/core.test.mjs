// Unit tests of the web client's core (gateway/web/core.js) with node's own runner: `node --test`.
// No browser and no DOM.  The shared vectors (tests/vectors/client_state.json) run here and against
// protocol/client_state.py (tests/unit/test_client_state_vectors.py).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { test } from "node:test";

import * as core from "../../gateway/web/core.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/client_state.json", import.meta.url), "utf8"));

for (const vector of vectors.cases) {
  test(`vector: ${vector.name}`, () => {
    const state = new core.ClientCore("vec");
    for (const step of vector.steps) {
      switch (step.op) {
        case "login": {
          const login = state.login("me", "pw", "batched");
          assert.deepEqual({ session: login.session ?? null, resume: login.resume ?? null }, step.expect);
          break;
        }
        case "receive":
          assert.equal(core.OUTCOMES[state.receive(step.frame)], step.expect, JSON.stringify(step.frame));
          break;
        case "request":
          state.request(step.frame, null);
          break;
        case "finished":
          state.finished(step.ref);
          break;
        case "watch_upload":
          state.watchUpload(step.upload, () => {});
          break;
        case "check":
          if ("positions" in step) assert.deepEqual(state.positions, step.positions);
          if ("duplicates" in step) assert.equal(state.duplicates, step.duplicates);
          if ("online" in step) assert.deepEqual([...state.online].sort(), step.online);
          if ("online_total" in step) assert.equal(state.onlineTotal, step.online_total);
          if ("groups" in step) assert.deepEqual([...state.groups].sort(), step.groups.map(core.nameKey));
          if ("session" in step) assert.equal(state.session, step.session);
          if ("resend" in step) assert.deepEqual(state.resend().map((t) => JSON.parse(t).ref), step.resend);
          break;
        default:
          assert.fail(`unknown step ${step.op}`);
      }
    }
  });
}

test("ids compare as (ms, seq) pairs, beyond 2^53", () => {
  assert.equal(core.compareIds("10-0", "9-0"), 1);
  assert.equal(core.compareIds("5-10", "5-9"), 1);
  assert.equal(core.compareIds("9223372036854775807-1", "9223372036854775807-0"), 1);
  assert.equal(core.compareIds("9223372036854775806-0", "9223372036854775807-0"), -1);
  assert.equal(core.compareIds("3-3", "3-3"), 0);
  assert.throws(() => core.idTuple("abc"));
});

test("names compare case-insensitively, full-width and ß included", () => {
  assert.equal(core.nameKey("ALICE"), core.nameKey("alice"));
  assert.equal(core.nameKey("Ａｌｉｃｅ"), "alice");
  assert.equal(core.nameKey("Straße"), core.nameKey("STRASSE"));
});

test("parseFrame accepts typed JSON objects only", () => {
  assert.deepEqual(core.parseFrame('{"type":"pong"}'), { type: "pong" });
  for (const bad of ["", "nope", "[]", "null", "1", '{"type":1}', '{"no":"type"}']) {
    assert.equal(core.parseFrame(bad), null, bad);
  }
});

test("login errors read as people expect", () => {
  assert.match(core.loginErrorText("username_taken", "x"), /^Username Exists/);
  assert.match(core.loginErrorText("bad_password", "x"), /Wrong password/);
  assert.equal(core.loginErrorText("something_new", "the server said so"), "the server said so");
});

test("reconnects after drops, not after a refusal, a takeover or our own close", () => {
  for (const code of [1001, 1006, 1011, 1013, 4002, 4003, 4008, 4029]) assert.ok(core.reconnectsAfter(code), code);
  for (const code of [1000, 4001, 4004]) assert.ok(!core.reconnectsAfter(code), code);
});

test("backoff doubles from 0.1 s to a 5 s cap, half of it random", () => {
  assert.equal(core.backoffDelay(0, () => 0), 50);
  assert.equal(core.backoffDelay(0, () => 1), 100);
  assert.equal(core.backoffDelay(3, () => 1), 800);
  assert.equal(core.backoffDelay(30, () => 1), 5000);
  assert.equal(core.backoffDelay(30, () => 0), 2500);
});

test("an upload chunk is CWU1, the raw upload id, the big-endian offset, the data", () => {
  const chunk = core.encodeChunk("528f54de7b60880b26987a6c50b9fda1", 262144, new Uint8Array([1, 2, 3]));
  assert.equal(Buffer.from(chunk.subarray(0, 4)).toString("latin1"), "CWU1");
  assert.equal(Buffer.from(chunk.subarray(4, 20)).toString("hex"), "528f54de7b60880b26987a6c50b9fda1");
  assert.equal(Buffer.from(chunk.subarray(20, 28)).toString("hex"), "0000000000040000");
  assert.deepEqual([...chunk.subarray(28)], [1, 2, 3]);
  assert.throws(() => core.encodeChunk("XYZ", 0, new Uint8Array(1)));
});

test("the fallback SHA-256 matches node's", () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 1000, 100_000]) {
    const bytes = new Uint8Array(size).map((_, i) => (i * 31 + size) & 0xff);
    assert.equal(core.sha256Hex(bytes), createHash("sha256").update(bytes).digest("hex"), `size ${size}`);
  }
});

test("conversations: replay, history and live copies of a message make one entry", () => {
  const convs = new core.Conversations();
  const m = (id, from, to, body = "x") => ({ type: "message", id, from, to, body, ts: 1 });
  assert.ok(convs.add(m("5-0", "bob", "@me"), "me"));
  assert.ok(!convs.add(m("5-0", "bob", "@me"), "me"));
  assert.equal(convs.addHistory("@bob", [m("3-0", "me", "@Bob"), m("5-0", "bob", "@me")], "me"), 1);
  assert.deepEqual(convs.get("@BOB").entries.map((e) => e.id), ["3-0", "5-0"]);
  assert.equal(convs.get("@bob").oldest, "3-0");
  assert.ok(convs.get("@bob").exhausted); // 2 of 50: nothing older is stored
  assert.equal(convs.addHistory("*", [m("1-0", "bob", "*")], "me", 1), 1);
  assert.ok(!convs.get("*").exhausted); // a full page: there may be more
  assert.equal(convs.addHistory("*", [], "me", 1), 0);
  assert.ok(convs.get("*").exhausted);
});

test("conversations: a pending send becomes its ack's message, whichever of ack and echo comes first", () => {
  const convs = new core.Conversations();
  convs.addPending("r1", "*", "hello", "me");
  assert.equal(convs.get("*").entries[0].pending, true);
  convs.add({ type: "message", id: "7-0", from: "me", to: "*", body: "hello", ts: 7 }, "me"); // the echo first
  convs.acked("r1", "*", { id: "7-0", ts: 7 });
  assert.deepEqual(convs.get("*").entries.map((e) => [e.id, e.pending]), [["7-0", false]]);
  convs.addPending("r2", "*", "again", "me");
  convs.acked("r2", "*", { id: "8-0", ts: 8 }); // the ack first
  assert.ok(!convs.add({ type: "message", id: "8-0", from: "me", to: "*", body: "again", ts: 8 }, "me"));
  assert.deepEqual(convs.get("*").entries.map((e) => e.id), ["7-0", "8-0"]);
  convs.addPending("r3", "@bob", "lost", "me");
  convs.failed("r3", "@bob", "unknown_user");
  assert.equal(convs.get("@bob").entries[0].failed, "unknown_user");
});

test("conversations: unread counts for conversations not on screen, not for our own messages", () => {
  const convs = new core.Conversations();
  convs.open("*");
  convs.add({ type: "message", id: "1-0", from: "bob", to: "*", body: "x", ts: 1 }, "me");
  convs.add({ type: "message", id: "2-0", from: "bob", to: "@me", body: "x", ts: 2 }, "me");
  convs.add({ type: "message", id: "3-0", from: "bob", to: "@me", body: "y", ts: 3 }, "me");
  convs.add({ type: "message", id: "4-0", from: "me", to: "#Devs", body: "z", ts: 4 }, "me");
  assert.equal(convs.get("*").unread, 0);
  assert.equal(convs.get("@bob").unread, 2);
  assert.equal(convs.get("#devs").unread, 0);
  assert.equal(convs.unreadTotal(), 2);
  convs.open("@bob");
  assert.equal(convs.unreadTotal(), 0);
  convs.addHistory("*", [{ type: "message", id: "0-5", from: "bob", to: "*", body: "old", ts: 0 }], "me");
  assert.equal(convs.get("*").unread, 0);
  assert.deepEqual(convs.get("*").entries.map((e) => e.id), ["0-5", "1-0"]);
});
