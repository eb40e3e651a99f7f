"""UTS #39 confusable skeletons of usernames: names that look alike share a skeleton.

``skeleton(X)`` (UTS #39 §4) is NFD, then every character replaced by its
prototype from Unicode's confusables table, then NFD again: ``\u0430lice``
(Cyrillic a) and ``alice`` share the skeleton ``alice``.  The table is compiled
into :mod:`protocol._confusables` (tools/gen_confusables.py), so nothing is
downloaded at run time.

Chinwag names are case-insensitive but shown as typed, while the table is
case-sensitive: Cyrillic ``\u04cf`` maps to ``i`` but its capital ``\u04c0`` to
``l``, and ``I`` maps to ``l``.  So a name has two skeletons, and a new name is
refused when either equals the same-side skeleton of an existing account:

* ``fold``: the skeleton of the case fold, folded and mapped again until it
  stops changing (``0`` maps to ``O``, which folds to ``o``): look-alikes in
  lower case (``\u0430licec``, ``al\u0131cec``, ``b0b``).
* ``upper``: the case fold of the skeleton of the upper case, in one pass:
  look-alikes in capitals, or in the mixed case a name can be shown in
  (``aIicec`` beside ``alicec``; all-Cyrillic ``\u0430\u04cf\u0456\u0441\u0435\u0441``).
"""

from __future__ import annotations

import base64
import functools
import unicodedata
import zlib

from . import _confusables

CONFUSABLES_VERSION = _confusables.CONFUSABLES_VERSION

# Characters that render as nothing (or as a blank) yet some count as letters for
# str.isalpha(): the Hangul fillers, Khmer inherent vowels, zero-width and format
# characters.  PRECIS refuses all of them in new names (protocol/names.py checks
# again); skeletons drop them, so a stored name padded with one still collides
# with its visible part.
INVISIBLE = frozenset(
    "\u115f\u1160\u3164\uffa0\u17b4\u17b5\u180e\u2800\u034f\u00ad\ufeff"
    "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\U00016fe4"
)


def _visible(text: str) -> str:
    return "".join(ch for ch in text if ch not in INVISIBLE and unicodedata.category(ch) != "Cf")


@functools.cache
def _table() -> dict[str, str]:
    rows = zlib.decompress(base64.b64decode("".join(_confusables.PACKED))).decode("ascii").split(";")
    table: dict[str, str] = {}
    for row in rows:
        src, _, proto = row.partition(":")
        table[chr(int(src, 16))] = "".join(chr(int(cp, 16)) for cp in proto.split(","))
    return table


def skeleton(text: str) -> str:
    """UTS #39 ``skeleton(text)``: case-sensitive, exactly as the standard defines it."""
    table = _table()
    nfd = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in nfd))


def name_skeletons(key: str) -> tuple[str, str]:
    """``(fold, upper)`` skeletons of a name key, invisible characters dropped; see the module docstring."""
    key = _visible(key)
    fold = key
    for _ in range(8):  # two or three rounds reach the fixpoint; bounded anyway
        nxt = skeleton(unicodedata.normalize("NFD", fold).casefold())
        if nxt == fold:
            break
        fold = nxt
    upper = unicodedata.normalize("NFD", skeleton(key.upper()).casefold())
    return fold, upper
