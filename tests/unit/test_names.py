"""Usernames, addresses and message ids (protocol/names.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.confusables import INVISIBLE, name_skeletons, skeleton
from protocol.errors import ErrorCode, InvalidFrame, InvalidUsername
from protocol.names import (
    BROADCAST,
    MAX_NAME_CHARS,
    Address,
    id_tuple,
    is_message_id,
    login_name,
    name_key,
    normalize_name,
    parse_address,
    registration_name,
)

# -- normalize_name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "display", "key"),
    [
        ("alice", "alice", "alice"),
        ("Alice", "Alice", "alice"),
        ("ALICE", "ALICE", "alice"),
        ("\uff21lice", "Alice", "alice"),  # fullwidth A (U+FF21): NFKC makes it ASCII
        ("\uff21\uff2c\uff29\uff23\uff25", "ALICE", "alice"),  # all fullwidth
        ("bob_99", "bob_99", "bob_99"),
        ("a.b-c_d", "a.b-c_d", "a.b-c_d"),
        ("___", "___", "___"),
        ("-", "-", "-"),
        ("x", "x", "x"),  # 1 char
        ("y" * 32, "y" * 32, "y" * 32),  # 32 chars
        ("\uff11\uff12\uff13", "123", "123"),  # fullwidth digits
        ("\ufb01sh", "fish", "fish"),  # ﬁ ligature
        ("Stra\u00dfe", "Stra\u00dfe", "strasse"),  # casefold, not lower
        ("\u0130stanbul", "\u0130stanbul", "i\u0307stanbul"),  # dotted capital I
        ("e\u0301t\u00e9", "\u00e9t\u00e9", "\u00e9t\u00e9"),  # combining accent composed by NFKC
        ("\u00c5ngstr\u00f6m", "\u00c5ngstr\u00f6m", "\u00e5ngstr\u00f6m"),
        ("\u540d\u524d", "\u540d\u524d", "\u540d\u524d"),  # CJK letters
        ("\u0391\u03b8\u03b7\u03bd\u03ac", "\u0391\u03b8\u03b7\u03bd\u03ac", "\u03b1\u03b8\u03b7\u03bd\u03ac"),
    ],
)
def test_valid_names(raw: str, display: str, key: str) -> None:
    assert normalize_name(raw) == (display, key)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "a b",
        " alice",
        "alice ",
        "a\tb",
        "a\nb",
        "a@b",
        "@bob",
        "*",
        "bob!",
        "a/b",
        "a:b",
        "a+b",
        "a'b",
        'a"b',
        "a\\b",
        "a,b",
        "emoji\U0001f600",
        "zero\u200bwidth",
        "\u0301",  # a lone combining mark is not a letter
        "a\x00b",
        "y" * 33,
        "\ufb00" * 17,  # 17 chars as typed, 34 after NFKC ("ff" each)
        "\uff0e" * 33,  # fullwidth full stops: "." after NFKC, but 33 of them
    ],
)
def test_invalid_names(raw: str) -> None:
    with pytest.raises(InvalidUsername) as info:
        normalize_name(raw)
    assert info.value.code is ErrorCode.INVALID_USERNAME


def test_length_is_counted_after_nfkc() -> None:
    assert normalize_name("\uff41" * MAX_NAME_CHARS)[0] == "a" * MAX_NAME_CHARS  # fullwidth, 32 -> 32
    assert normalize_name("\u33a1" * 16)[0] == "m2" * 16  # ㎡ is "m2": 16 typed, 32 after NFKC
    with pytest.raises(InvalidUsername):
        normalize_name("\u33a1" * 17)  # 17 typed, 34 after NFKC


def test_case_variants_share_one_key() -> None:
    variants = ["Alice", "ALICE", "alice", "aLiCe", "\uff21lice", "\uff41\uff4c\uff49\uff43\uff45"]
    assert {normalize_name(v)[1] for v in variants} == {"alice"}
    assert len({normalize_name(v)[0] for v in variants}) == 4  # displays keep the case as typed


def test_name_key_is_idempotent_and_case_insensitive() -> None:
    for name in ["Alice", "Stra\u00dfe", "\u0130stanbul", "\u039f\u03b4\u03c5\u03c3\u03c3\u03b5\u03cd\u03c2"]:
        key = name_key(name)
        assert name_key(key) == key
        assert name_key(name.upper()) == key
        assert name_key(name.lower()) == key


@given(st.text(max_size=40))
def test_normalize_name_never_raises_anything_else(raw: str) -> None:
    try:
        display, key = normalize_name(raw)
    except InvalidUsername:
        return
    assert 1 <= len(display) <= MAX_NAME_CHARS
    assert all(c.isalpha() or c.isdigit() or c in "_-." for c in display)
    assert normalize_name(display) == (display, key)  # normalising twice changes nothing
    assert name_key(display) == key


# -- registration rules: PRECIS UsernameCaseMapped (RFC 8265) + invisible characters -------------

# The impersonations of issue 11.5, each of which registered and showed as "alicec".
FILLERS = ["\u3164", "\u115f", "\u1160", "\uffa0", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
           "\u034f", "\u17b4", "\u180e"]


@pytest.mark.parametrize("filler", FILLERS)
@pytest.mark.parametrize("where", ["end", "middle", "start", "alone"])
def test_invisible_and_filler_characters_cannot_be_registered(filler: str, where: str) -> None:
    raw = {"end": "alicec" + filler, "middle": "ali" + filler + "cec", "start": filler + "alicec",
           "alone": filler}[where]
    with pytest.raises(InvalidUsername) as info:
        registration_name(raw)
    assert info.value.code == ErrorCode.INVALID_USERNAME


def test_hangul_fillers_passed_the_old_rules() -> None:
    """What made the attack possible: U+3164 is a "letter" to str.isalpha()."""
    assert normalize_name("alicec\u3164")[0] == "alicec\u1160"
    assert not login_name("alicec\u3164").registrable


@pytest.mark.parametrize(
    ("raw", "display", "key"),
    [
        ("alice", "alice", "alice"),
        ("Alice", "Alice", "alice"),
        ("\uff21lice", "Alice", "alice"),  # fullwidth: PRECIS width-maps it
        ("Stra\u00dfe", "Stra\u00dfe", "strasse"),  # one name with STRASSE, as before
        ("\u540d\u524d", "\u540d\u524d", "\u540d\u524d"),
        ("\u0430licec", "\u0430licec", "\u0430licec"),  # valid by itself; the skeleton check refuses it
    ],
)
def test_registrable_names(raw: str, display: str, key: str) -> None:
    assert registration_name(raw) == (display, key)
    assert login_name(raw).registrable


@pytest.mark.parametrize(
    "raw",
    ["x\u00b2", "\ufb01sh", "\u05d0abc", "abc\u05d0"],  # compatibility characters; the bidi rule
)
def test_names_only_the_older_rules_accept_may_log_in_but_not_register(raw: str) -> None:
    with pytest.raises(InvalidUsername):
        registration_name(raw)
    name = login_name(raw)
    assert not name.registrable and name.refusal
    assert (name.display, name.key) == normalize_name(raw)  # the key an account stored under them has


@given(st.text(max_size=40))
def test_registrable_names_keep_the_keys_of_the_older_rules(raw: str) -> None:
    """Every name PRECIS accepts has the key (and display) normalize_name always gave it:
    stored accounts are found under the new rules, and addresses reach them."""
    try:
        display, key = registration_name(raw)
    except InvalidUsername:
        return
    assert normalize_name(raw) == (display, key)
    assert not any(c in INVISIBLE for c in display)


# -- confusable skeletons (UTS #39) -----------------------------------------------------------


def test_skeleton_is_the_uts39_one() -> None:
    assert skeleton("\u0430") == "a"  # Cyrillic a
    assert skeleton("\u0131") == "i"  # dotless i
    assert skeleton("I") == "l" and skeleton("1") == "l"
    assert skeleton("m") == "rn"


@pytest.mark.parametrize(
    "look_alike",
    [
        "\u0430licec",  # Cyrillic a
        "al\u0131cec",  # dotless i
        "\u0430\u04cf\u0456\u0441\u0435\u0441",  # all Cyrillic: a, palochka, i, es, ie, es
        "\u0410\u04c0\u0406\u0421\u0415\u0421",  # the same in capitals
        "aIicec",  # capital I shown for i looks like l: the key is "aiicec"
        "ALICEC",
        "alicec\u3164",  # a stored name with a filler collides with its visible part
    ],
)
def test_look_alikes_share_a_skeleton_with_the_original(look_alike: str) -> None:
    original = name_skeletons(name_key("alicec"))
    mine = name_skeletons(normalize_name(look_alike)[1])
    assert mine[0] == original[0] or mine[1] == original[1]


@pytest.mark.parametrize("other", ["alice", "alicecc", "bob", "alexander", "malice", "\u0430\u0432\u0433"])
def test_different_names_have_different_skeletons(other: str) -> None:
    original = name_skeletons("alicec")
    theirs = name_skeletons(name_key(other))
    assert theirs[0] != original[0] and theirs[1] != original[1]


def test_skeletons_are_case_insensitive_and_stable() -> None:
    for name in ["alicec", "Stra\u00dfe", "b0b", "\u03a3\u03bf\u03c6\u03af\u03b1"]:
        key = name_key(name)
        assert name_skeletons(key) == name_skeletons(name_key(name.upper()))
        assert name_skeletons(key) == name_skeletons(key)
    assert name_skeletons("b0b") == name_skeletons("bob")


# -- parse_address ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "text"),
    [
        ("@bob", Address("user", "bob", "bob"), "@bob"),
        ("@Bob", Address("user", "Bob", "bob"), "@Bob"),
        ("@BOB", Address("user", "BOB", "bob"), "@BOB"),
        ("@\uff22ob", Address("user", "Bob", "bob"), "@Bob"),  # fullwidth
        ("@a.b-c_1", Address("user", "a.b-c_1", "a.b-c_1"), "@a.b-c_1"),
        ("@" + "z" * 32, Address("user", "z" * 32, "z" * 32), "@" + "z" * 32),
        ("*", Address("broadcast"), "*"),
    ],
)
def test_valid_addresses(raw: str, expected: Address, text: str) -> None:
    address = parse_address(raw)
    assert address == expected
    assert str(address) == text


def test_broadcast_constant() -> None:
    assert BROADCAST == "*"
    assert parse_address(BROADCAST).kind == "broadcast"


@pytest.mark.parametrize(
    "raw",
    [
        "bob",  # no @
        "@",  # no name
        "@bad name",
        "@bad@name",
        "@@bob",
        "#bad group",
        "#",
        "",
        " ",
        "**",
        " *",
        "* ",
        "@*",
        "*bob",
        "@" + "z" * 33,
        " @bob",
        "@bob ",
        "\uff20bob",  # fullwidth @ is not an address marker
        "all",
    ],
)
def test_invalid_addresses_are_invalid_frame_not_invalid_username(raw: str) -> None:
    with pytest.raises(InvalidFrame) as info:
        parse_address(raw)
    assert info.value.code is ErrorCode.INVALID_FRAME  # a bad address is a bad frame, not a login refusal
    assert not isinstance(info.value, InvalidUsername)


def test_invalid_address_message_is_bounded() -> None:
    with pytest.raises(InvalidFrame) as info:
        parse_address("#" + "x" * 10_000)
    assert len(info.value.message) < 200


# -- message ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["1-0", "0-1", "1700000000000-0", "1700000000000-12", "9223372036854775807-9223372036854775807"]
)
def test_message_ids(raw: str) -> None:
    assert is_message_id(raw)


@pytest.mark.parametrize("raw", ["", "x", "1", "1-", "-1", "1-2-3", "a-1", "1-a", " 1-2", "1-2 ", "1.5-2", "+1-2",
                                 "123456789012345678901-0",
                                 "0-0",  # nothing is before the first possible id
                                 "9223372036854775808-0", "0-9223372036854775808",  # parts are at most 2**63-1
                                 "18446744073709551615-0", "99999999999999999999-0", "1-99999999999999999999"])
def test_not_message_ids(raw: str) -> None:
    assert not is_message_id(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("1-2\n", id="trailing-newline"),  # `$` also matches before a final newline
        pytest.param("\u0661\u0662-\u0663", id="arabic-indic-digits"),  # `\d` is any Unicode digit
    ],
)
def test_ids_redis_would_reject_are_not_message_ids(raw: str) -> None:
    assert not is_message_id(raw)


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [("1-0", "1-1"), ("9-5", "10-0"), ("1700000000000-9", "1700000000000-10"), ("0-0", "1-0")],
)
def test_id_tuple_orders_numerically(smaller: str, larger: str) -> None:
    assert id_tuple(smaller) < id_tuple(larger)


def test_id_tuple_values() -> None:
    assert id_tuple("1700000000000-7") == (1700000000000, 7)
    assert id_tuple("0-0") == (0, 0)
