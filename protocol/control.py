"""Control messages between gateways: typed, with one encoder and one decoder.

Gateways never talk to each other directly.  A Lua script that changes something a
*different* gateway must act on (a session taken over, a member removed from a group,
an invitation for someone online elsewhere) publishes one of these on that gateway's
control channel (``common.keys.gateway_channel``).  The scripts build the JSON from
these Structs (``common/lua_json.py``), so the shape is defined here only.
"""

from __future__ import annotations

import msgspec


class _Control(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    pass


class Kick(_Control, tag="kick"):
    """The name ``user`` (a name key) was taken over by a new login: close the session whose
    token hash is ``token`` (not a newer one of the same name)."""

    user: str
    token: str


class Part(_Control, tag="part", omit_defaults=True):
    """``user`` (a name key) is no longer in the group ``group`` (removed, or left on another
    session): stop delivering its messages to them now.  A removal carries the membership's span:
    ``since`` (the id current when it began) and ``upto`` (the newest id at the removal); the
    session is still owed what the group stored in between and it has not had yet."""

    group: str
    user: str
    since: str = ""
    upto: str = ""


class Notify(_Control, tag="notify"):
    """Push ``frame`` (a server frame, e.g. an invitation's group_event) to ``user`` if they
    are connected here."""

    user: str
    frame: msgspec.Raw


Control = Kick | Part | Notify

_decoder = msgspec.json.Decoder(Control)
_encoder = msgspec.json.Encoder()


def decode(data: bytes) -> Control:
    """A control message, or ``msgspec.ValidationError``/``DecodeError`` for anything else."""
    message: Control = _decoder.decode(data)
    return message


def encode(message: Control) -> bytes:
    return _encoder.encode(message)


class Mark(msgspec.Struct, tag_field="type", tag="_mark"):
    """Published on a group's channel right after a membership is created (gateway/group_relay.py):
    a frame after it on the channel is after the membership.  Never sent to clients."""

    n: str  # the join's nonce


MARK_PREFIX = _encoder.encode(Mark(n="\ue000")).partition("\ue000".encode())[0]
assert MARK_PREFIX.endswith(b'"'), MARK_PREFIX  # the placeholder was found


def mark(nonce: str) -> bytes:
    return _encoder.encode(Mark(n=nonce))
