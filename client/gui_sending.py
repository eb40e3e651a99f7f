"""Sending from the Tk client: the Send / Broadcast / Send file buttons and each line's fate.

Sending never makes a line vanish: it is drawn at once as "sending…" (the
client library holds it while reconnecting and re-sends it once back), turns
into the stored message when the ``ack`` arrives, or shows "not sent: why"
and the text goes back into the box so it can be sent again.

:class:`Sending` extends :class:`client.gui_conversations.Conversations` (the
conversations it sends to) and is, like it, a mixin of :class:`client.gui.ChatWindow`.
"""

from __future__ import annotations

import concurrent.futures
import os
from functools import partial

from client.chat import ChatClient, Disconnected
from client.files import upload
from client.gui_conversations import Conversations
from client.gui_model import Conversation, Pending, reason
from protocol import frames as f
from protocol.errors import ChatError
from protocol.files import FileRef


class Sending(Conversations):
    """The typed line or a picked file, sent to the open conversation or to everyone."""

    def _can_send(self) -> bool:
        if self.client is None or self.state not in ("connected", "reconnecting"):
            self.flash("Not connected: press Connect first.")
            return False
        return True

    def send(self) -> None:
        """Send the typed line to the open conversation (Send button, Enter)."""
        body = self.message_var.get()
        if not body.strip():
            return
        if self.current is None:
            self.flash("Select someone in Online clients, or a group, to chat with (or press Broadcast).")
            return
        if self._can_send():
            self._send_to(self.conversations[self.current], body)

    def broadcast(self) -> None:
        """Send the typed line to everyone (Broadcast button, Ctrl+Enter)."""
        body = self.message_var.get()
        if body.strip() and self._can_send():
            self._send_to(self.broadcasts, body)

    def _send_to(self, conv: Conversation, body: str) -> None:
        assert self.client is not None
        self.message_var.set("")
        line = conv.start_sending(body)
        self._redraw(conv)
        self.bridge.submit(self.client.send(conv.address, body), done=partial(self._sent, self.gen, conv, line))

    def _sent(self, gen: int, conv: Conversation, line: Pending, fut: concurrent.futures.Future[f.Ack]) -> None:
        if gen != self.gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            why = (exc.message if isinstance(exc, ChatError) else "the connection was closed"
                   if isinstance(exc, Disconnected) else reason(exc))
            conv.failed(line.token, why)
            if not self.message_var.get():
                self.message_var.set(line.body)  # give the text back so it can be sent again
            self.flash(f"Not sent to {conv.peer}: {why}", error=True)
        else:
            ack = fut.result()
            conv.sent(line.token, f.Message(id=ack.id, from_=self.me, to=conv.address, body=line.body, ts=ack.ts,
                                            file=line.file))
        self._redraw(conv)

    def fail_pending(self, why: str) -> None:
        """The connection ended for good: lines still waiting will not be sent."""
        for conv in [*self.conversations.values(), self.broadcasts]:
            for token, line in conv.pending.items():
                if line.error is None:
                    conv.failed(token, why)
        self.render_broadcasts()

    def send_file(self) -> None:
        """The "Send file…" button: pick a file, upload it, then send it to the open conversation."""
        if self.current is None:
            self.flash("Select someone in Online clients, or a group, to send a file to.")
            return
        if not self._can_send():
            return
        path = self.ask_open_file()
        if not path:
            return  # the dialog was cancelled
        assert self.client is not None
        conv = self.conversations[self.current]
        name = os.path.basename(path)
        self.flash(f"Sending {name}\u2026")
        line = conv.start_sending(f"File: {name} (uploading\u2026)")
        self._redraw(conv)
        self.bridge.submit(_upload_and_send(self.client, conv.address, path),
                           done=partial(self._file_sent, self.gen, conv, line, name))

    def _file_sent(self, gen: int, conv: Conversation, line: Pending, name: str,
                   fut: concurrent.futures.Future[tuple[f.Ack, FileRef]]) -> None:
        if gen != self.gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            conv.failed(line.token, reason(exc))
            self.flash(f"Could not send {name}: {reason(exc)}", error=True)
        else:
            ack, ref = fut.result()
            conv.sent(line.token, f.Message(id=ack.id, from_=self.me, to=conv.address, body="", ts=ack.ts,
                                            file=ref))
            self.flash(f"Sent {name} to {conv.peer}.")
        self._redraw(conv)


async def _upload_and_send(client: ChatClient, to: str, path: str) -> tuple[f.Ack, FileRef]:
    """On the network thread: store the file (resumable chunks), then send a message carrying it."""
    ref = await upload(client, path)
    return await client.send(to, "", file=ref), ref
