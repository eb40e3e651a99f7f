"""The ``chinwag`` CLI as real subprocesses in scripted mode, against real gateway processes.

Every CLI process is bounded: output is collected by reader threads and waited
on with deadlines (never a bare sleep), and the ``cli`` fixture kills whatever
is still running at teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from client.cli import EXIT_COMMANDS_FAILED, EXIT_CONNECTION, EXIT_LOGIN, EXIT_OK
from protocol import frames as f
from tests.helpers import ROOT, Clients, Processes, RedisServer, free_port, wait_for_event, wait_until

TIME = r"\[\d\d:\d\d:\d\d\]"
LINE_TIMEOUT = 15.0
EXIT_TIMEOUT = 20.0


def cli_env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["CHINWAG_PASSWORD"] = password
    return env


class Cli:
    """One ``python -m client`` process with stdin kept open; stdout/stderr collected line by line."""

    def __init__(self, server: str, user: str, password: str = "pw", args: tuple[str, ...] = ()) -> None:
        self.user = user
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", "--server", server, "--user", user, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=cli_env(password), cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: object, into: list[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.proc.stdin.flush()

    def wait_for(self, pattern: str, timeout: float = LINE_TIMEOUT) -> str:
        """The first stdout line matching the regex ``pattern`` (fails the test after ``timeout``)."""
        regex = re.compile(pattern)

        def find() -> str | None:
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                raise AssertionError(f"{self.user}'s CLI exited ({self.proc.returncode}):\n{self.transcript()}")
            return next((line for line in list(self.out) if regex.search(line)), None)

        try:
            return str(wait_until(find, timeout, f"{pattern!r} from {self.user}'s CLI"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.transcript()}") from None

    def logged_in(self) -> Cli:
        self.wait_for(rf"^\* logged in as {self.user} ")
        return self

    def finish(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Close stdin (end of script) and wait for a clean exit."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def transcript(self) -> str:
        return "\n".join([f"--- {self.user} stdout", *self.out, f"--- {self.user} stderr", *self.err])


def run_cli(server: str, user: str, script: str, password: str = "pw", args: tuple[str, ...] = (),
            timeout: float = EXIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the CLI over a whole script (stdin closed at its end); bounded by ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "client", "--server", server, "--user", user, *args],
        input=script, capture_output=True, text=True, env=cli_env(password), cwd=ROOT, timeout=timeout,
    )


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    started: list[Cli] = []

    def start(server: str, user: str, password: str = "pw", args: tuple[str, ...] = ()) -> Cli:
        proc = Cli(server, user, password, args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def gateway_url(redis_server: RedisServer, processes: Processes) -> str:
    return processes.gateway(redis_server.url).url


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def test_two_cli_users_chat(two_gateways: tuple[str, str], cli: Callable[..., Cli]) -> None:
    url1, url2 = two_gateways
    bob = cli(url2, "bob").logged_in()
    alice = cli(url1, "alice").logged_in()
    bob.wait_for(r"^\* alice is online$")

    alice.send("/msg bob hi bob", "/all hello everyone")
    bob.wait_for(rf"^{TIME} <alice> hi bob$")
    bob.wait_for(rf"^{TIME} <alice→\*> hello everyone$")
    alice.wait_for(rf"^{TIME} <alice→bob> hi bob$")  # DM echoed after the ack
    alice.wait_for(rf"^{TIME} <alice→\*> hello everyone$")  # broadcast comes back to the sender

    bob.send("/to alice", "plain line to alice", "/who")
    bob.wait_for(r"^\* talking to alice: plain lines go to alice$")
    alice.wait_for(rf"^{TIME} <bob> plain line to alice$")
    bob.wait_for(r"^\* online: alice, bob$")

    assert alice.finish() == EXIT_OK
    bob.wait_for(r"^\* alice is offline$")
    assert bob.finish() == EXIT_OK
    assert alice.err == [] and bob.err == []
    no_traceback(alice.transcript(), bob.transcript())


def test_history_after_the_fact(gateway_url: str, cli: Callable[..., Cli]) -> None:
    bob = cli(gateway_url, "bob").logged_in()
    done = run_cli(gateway_url, "alice", "/msg bob first\n/msg bob second\n/all to all\n")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    bob.wait_for(rf"^{TIME} <alice> second$")

    bob.send("/history alice", "/history * 5", "/history alice 1")
    bob.wait_for(r"^\* history with alice: 2 messages$")
    bob.wait_for(r"^\* history of the broadcast: 1 message$")
    bob.wait_for(r"^\* history with alice: 1 message$")
    assert bob.finish() == EXIT_OK
    start = bob.out.index("* history with alice: 2 messages")
    assert [re.sub(TIME, "[T]", line) for line in bob.out[start:start + 6]] == [
        "* history with alice: 2 messages",
        "[T] <alice> first",
        "[T] <alice> second",
        "* history of the broadcast: 1 message",
        "[T] <alice→*> to all",
        "* history with alice: 1 message",
    ]


async def test_scripted_mode_waits_for_every_ack_before_exiting(gateway_url: str, clients: Clients) -> None:
    """A script ending right after its sends loses nothing: each send is acked before the next line."""
    bob = await clients.login(gateway_url, "bob")
    bodies = [f"message {i}" for i in range(30)]
    script = "".join(f"/msg bob {body}\n" for body in bodies) + "/all last one\n/quit\n"
    done = await asyncio.to_thread(run_cli, gateway_url, "alice", script)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    for body in bodies:
        got = await wait_for_event(bob, lambda e, b=body: isinstance(e, f.Message) and e.body == b)  # type: ignore[misc]
        assert isinstance(got, f.Message) and got.from_ == "alice" and got.to == "@bob"
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.body == "last one")
    assert isinstance(got, f.Message) and got.to == "*"
    echoed = [line for line in done.stdout.splitlines() if re.match(rf"^{TIME} <alice→bob> message \d+$", line)]
    assert len(echoed) == len(bodies)


async def test_cli_receives_from_a_library_client(gateway_url: str, clients: Clients, cli: Callable[..., Cli]) -> None:
    carol = cli(gateway_url, "carol")
    await asyncio.to_thread(carol.logged_in)
    dave = await clients.login(gateway_url, "dave")
    await dave.send("@carol", "line one\nline two \x1b[31m")
    await asyncio.to_thread(carol.wait_for, rf"^{TIME} <dave> line one\\nline two \\x1b\[31m$")
    await dave.close()
    await asyncio.to_thread(carol.wait_for, r"^\* dave is offline$")
    assert await asyncio.to_thread(carol.finish) == EXIT_OK


def test_offline_dm_is_delivered_at_next_login(gateway_url: str) -> None:
    first = run_cli(gateway_url, "bob", "/quit\n")  # registers bob, who then leaves
    assert first.returncode == EXIT_OK, first.stderr
    sent = run_cli(gateway_url, "alice", "/msg bob while you were out\n")
    assert sent.returncode == EXIT_OK, sent.stderr
    assert "* bob is offline; they get the message when they log in" in sent.stdout.splitlines()
    later = run_cli(gateway_url, "bob", "")
    assert later.returncode == EXIT_OK, later.stderr
    assert any(re.match(rf"^{TIME} <alice> while you were out$", line) for line in later.stdout.splitlines())


def test_taken_name_prints_username_exists(gateway_url: str, cli: Callable[..., Cli]) -> None:
    first = cli(gateway_url, "alice").logged_in()
    second = run_cli(gateway_url, "alice", "/msg alice should never be sent\n")
    assert second.returncode == EXIT_LOGIN
    assert "Username Exists" in second.stderr
    assert second.stdout == ""
    no_traceback(second.stdout, second.stderr)
    assert first.proc.poll() is None  # the session holding the name is untouched
    assert first.finish() == EXIT_OK


def test_wrong_password_exits_non_zero(gateway_url: str) -> None:
    assert run_cli(gateway_url, "alice", "", password="right").returncode == EXIT_OK
    wrong = run_cli(gateway_url, "alice", "/all should never be sent\n", password="wrong")
    assert wrong.returncode == EXIT_LOGIN
    assert wrong.stderr.strip() == "! Wrong Password: the password for alice is not correct (bad_password)"
    assert wrong.stdout == ""
    no_traceback(wrong.stderr)


def test_unreachable_server_exits_non_zero() -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_cli(url, "alice", "/quit\n")
    assert done.returncode == EXIT_CONNECTION
    assert done.stderr.startswith(f"! Cannot Connect: {url} is unreachable")
    no_traceback(done.stderr)


def test_bad_commands_are_reported_and_the_exit_status_says_so(gateway_url: str) -> None:
    done = run_cli(gateway_url, "alice", "no recipient yet\n/frob\n/msg\n/msg nobody hi\n/history x 0\n/all fine\n")
    assert done.returncode == EXIT_COMMANDS_FAILED, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for expected in (
        "! no_recipient: nobody to send to: use /to NAME, /msg NAME TEXT or /all TEXT",
        "! unknown_command: /frob is not a command (try /help)",
        "! usage: /msg NAME TEXT",
        "! unknown_user: no user named 'nobody'",
        "! usage: COUNT must be a number from 1 to 100, not '0'",
    ):
        assert expected in lines, done.stdout
    no_traceback(done.stdout, done.stderr)


def test_wait_keeps_listening_after_end_of_input(gateway_url: str) -> None:
    start = time.monotonic()
    done = run_cli(gateway_url, "alice", "/who\n", args=("--wait", "1.5"))
    elapsed = time.monotonic() - start
    assert done.returncode == EXIT_OK, done.stderr
    assert "* online: alice" in done.stdout.splitlines()
    assert elapsed >= 1.5


def test_lost_connection_exits_non_zero(redis_server: RedisServer, processes: Processes,
                                        cli: Callable[..., Cli]) -> None:
    gateway = processes.gateway(redis_server.url)
    alice = cli(gateway.url, "alice", args=("--no-reconnect",)).logged_in()
    gateway.terminate()
    assert alice.wait() == EXIT_CONNECTION
    assert any(line.startswith("! disconnected: ") for line in alice.err), alice.transcript()
    no_traceback(alice.transcript())


def test_cli_rides_out_a_gateway_death_and_misses_nothing(
    redis_server: RedisServer, processes: Processes, cli: Callable[..., Cli]
) -> None:
    """kill -9 the CLI's gateway: it says so, reconnects to the other, and the DM sent meanwhile arrives."""
    doomed = processes.gateway(redis_server.url)
    spare = processes.gateway(redis_server.url)
    alice = cli(f"{doomed.url},{spare.url}", "alice").logged_in()
    bob = cli(spare.url, "bob").logged_in()
    doomed.kill()
    alice.wait_for(r"^\* connection to .* lost; reconnecting")
    bob.send("/msg alice sent while you were away")
    alice.wait_for(rf"^\* connected to {re.escape(spare.url)}")
    alice.wait_for(r"<bob> sent while you were away$")
    assert sum("sent while you were away" in line for line in alice.out) == 1
    assert alice.finish() == 0
    assert bob.finish() == 0


def test_group_chat_between_two_clis_on_two_gateways(two_gateways: tuple[str, str], cli: Callable[..., Cli]) -> None:
    url1, url2 = two_gateways
    alice = cli(url1, "alice").logged_in()
    bob = cli(url2, "bob").logged_in()

    alice.send("/create devs")
    alice.wait_for(r"^\* #devs: owner alice, members alice$")
    bob.send("/join #devs")
    bob.wait_for(r"^\* #devs: owner alice, members alice, bob$")
    alice.wait_for(r"^\* #devs: bob joined$")  # across gateways

    alice.send("/msg #devs hello group", "/groups")
    bob.wait_for(rf"^{TIME} <alice→#devs> hello group$")
    alice.wait_for(rf"^{TIME} <alice→#devs> hello group$")  # group messages come back to the sender too
    alice.wait_for(r"^\* groups: #devs \(owner alice\)$")

    bob.send("/leave devs")
    bob.wait_for(r"^\* #devs: you left$")
    alice.wait_for(r"^\* #devs: bob left$")
    bob.send("/msg #devs am I still in?")
    bob.wait_for(r"^! not_member: ")

    assert alice.finish() == EXIT_OK
    assert bob.finish() == EXIT_COMMANDS_FAILED  # the send after leaving failed
    assert sum("hello group" in line for line in bob.out) == 1
    assert alice.err == [] and bob.err == []
    no_traceback(alice.transcript(), bob.transcript())
