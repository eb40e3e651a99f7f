// Files in the web client: chunked, resumable upload over the WebSocket (docs/protocol.md §15.2),
// and download over HTTP with the connection's session token (§15.4), images shown inline.
// Mixed into the Chat class of app.js (methods that use its connection and core).

import { encodeChunk, hex, sha256Hex } from "./core.js";
import { el, fileLabel } from "./ui.js";

const UPLOAD_WINDOW = 4; // chunks in flight
const INLINE_IMAGE_BYTES = 8 * 1024 * 1024;

export const FileMethods = {
  async upload(file, onProgress) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const sha256 = crypto.subtle ? hex(await crypto.subtle.digest("SHA-256", bytes)) : sha256Hex(bytes);
    const declare = { type: "upload", name: file.name, size: bytes.length, sha256 };
    if (file.type && /^[\w.+-]+\/[\w.+-]+$/.test(file.type)) declare.mime = file.type.toLowerCase();
    for (let attempt = 0; attempt < 20; attempt++) {
      const ready = await this.request({ ...declare });
      if (ready.type === "uploaded") return ready.file;
      const done = await this.pumpChunks(ready, bytes, onProgress);
      if (done) return done;
      if (!this.loggedIn) await new Promise((resolve) => this.onReconnected.push(resolve));
    }
    throw new Error("the upload kept failing");
  },

  /** Chunks from ready.offset with a window in flight; the file ref when stored, null to declare again. */
  pumpChunks(ready, bytes, onProgress) {
    return new Promise((resolve, reject) => {
      let next = ready.offset;
      let inFlight = 0;
      const unhook = this.core.watchUpload(ready.upload, (reply) => {
        if (reply.type === "chunk_ack") {
          inFlight -= 1;
          onProgress(reply.offset / Math.max(1, bytes.length));
          pump();
        } else if (reply.type === "uploaded") {
          unhook();
          onProgress(1);
          resolve(reply.file);
        } else if (reply.type === "error" && reply.code === "invalid_frame" && reply.offset !== undefined) {
          unhook();
          resolve(null); // out of step: ask where the server is
        } else if (reply.type === "disconnected") {
          unhook();
          resolve(null);
        } else {
          unhook();
          reject(Object.assign(new Error(reply.message || "upload failed"), reply));
        }
      });
      const pump = () => {
        while (inFlight < UPLOAD_WINDOW && next < bytes.length && this.loggedIn) {
          const end = Math.min(bytes.length, next + ready.chunk);
          this.ws.send(encodeChunk(ready.upload, next, bytes.subarray(next, end)));
          inFlight += 1;
          next = end;
        }
      };
      pump();
    });
  },

  /** The file's bytes as an object URL, fetched with this connection's session token. */
  async fileUrl(file) {
    let url = this.blobUrls.get(file.id);
    if (url) return url;
    const query = new URLSearchParams({ user: this.core.user });
    const response = await fetch(`/files/${file.id}?${query}`, {
      headers: { Authorization: `Bearer ${this.core.session}` },
      cache: "no-store",
    });
    if (!response.ok) throw new Error(`download failed: HTTP ${response.status}`);
    const blob = await response.blob();
    url = URL.createObjectURL(new Blob([blob], { type: file.mime || "application/octet-stream" }));
    this.blobUrls.set(file.id, url);
    return url;
  },

  fileView(file) {
    const box = el("span", { class: "file", "data-file": file.id });
    const save = el("button", {
      type: "button",
      class: "link",
      text: `Download ${fileLabel(file)}`,
      onclick: async () => {
        try {
          const url = await this.fileUrl(file);
          const a = el("a", { href: url, download: file.name });
          document.body.append(a);
          a.click();
          a.remove();
        } catch (err) {
          save.textContent = `${fileLabel(file)}: ${err.message}`;
        }
      },
    });
    box.append(save);
    if ((file.mime || "").startsWith("image/") && file.size <= INLINE_IMAGE_BYTES) {
      this.fileUrl(file).then(
        (url) => box.append(el("img", { src: url, alt: `image ${file.name}` })),
        () => {},
      );
    }
    return box;
  },
};
