"""A DM conversation's history: the merge by id of its two halves.

A DM is stored once, in the recipient's slot (docs/cluster.md): its frame goes to the
recipient's inbox and to the recipient's half of the conversation, ``keys.dm_half(recipient,
sender)``, a stream numbered by the recipient's clock.  So alice's conversation with bob is
bob's half with alice (what alice sent) plus alice's half with bob (what bob sent).  Each half is
read newest first before ``before``; the newest ``limit`` of the union is the page.

The halves never share an id: a send to the lexically lower name of the pair gets an even
``seq``, the other direction an odd one (``dm_parity``), so ``before`` paging by id neither skips
nor repeats a message, and the merge needs no dedupe.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.names import id_tuple

Row = tuple[tuple[int, int], bytes]  # (id, frame)


def dm_parity(to_key: str, sender_key: str) -> str:
    """The seq parity of a DM's id ("0" even, "1" odd), so the conversation's two directions never
    share an id; '' for a note to self (one half, one clock: nothing to tell apart)."""
    if to_key == sender_key:
        return ""
    return "0" if to_key < sender_key else "1"


def rows(raw: Sequence[tuple[bytes | str, dict[bytes, bytes]]] | None) -> list[Row]:
    """XRANGE/XREVRANGE entries as (id tuple, frame)."""
    out: list[Row] = []
    for rid, fields in raw or ():
        out.append((id_tuple(rid.decode() if isinstance(rid, bytes) else rid), fields[b"f"]))
    return out


def merge_newest(a: Sequence[Row], b: Sequence[Row], limit: int) -> list[bytes]:
    """The newest ``limit`` frames of both halves, oldest first (each half in any order)."""
    merged = sorted([*a, *b], key=lambda row: row[0])
    return [frame for _, frame in merged[max(0, len(merged) - limit):]]
