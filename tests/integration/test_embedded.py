"""chinwag-server: the single node with its embedded Redis."""

from __future__ import annotations

from pathlib import Path

from protocol import frames as f
from tests.helpers import Clients, Processes, wait_for_event


async def test_embedded_node_chats_and_keeps_accounts(tmp_path: Path, processes: Processes, clients: Clients) -> None:
    data = tmp_path / "data"
    server = processes.server(args=["--data-dir", str(data)])
    assert "embedded Redis" in server.log()
    alice = await clients.login(server.url, "alice", "a-secret")
    bob = await clients.login(server.url, "bob")
    ack = await alice.send("@bob", "hello from the embedded node")
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert isinstance(got, f.Message) and got.id == ack.id
    await clients.close_all()
    assert server.terminate() == 0

    # Restarted on the same data directory, the accounts and history are still there.
    again = processes.server(args=["--data-dir", str(data)])
    bob = await clients.login(again.url, "bob")
    assert [m.body for m in await bob.history("@alice")] == ["hello from the embedded node"]
