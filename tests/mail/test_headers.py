"""Header text we write by hand, checked character by character.

The message tests show whole emails; these pin each rule of ``mail.headers`` at its
edges (the 78-character fold, the 70-character word, the 60-character phrase, the
39-byte encoded word, every control-character range), so that moving a bound by
one or dropping a rule shows up here and not in someone's inbox.
"""

from __future__ import annotations

import base64
import email.header

import pytest

from newsletter.mail.headers import (
    MAX_LINE,
    addr_spec,
    address,
    clean_header_text,
    encoded_words,
    fold_words,
    header_safe,
    list_id,
    phrase,
    unstructured,
    without_specials,
)


def word(text: str) -> str:
    """The encoded word we expect for ``text`` (base64 of its UTF-8)."""
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def decoded(header_value: str) -> str:
    """What a mail reader shows: RFC 2047 words decoded, folds unfolded."""
    parts = email.header.decode_header(header_value.replace("\r\n ", " "))
    return "".join(p.decode(c or "ascii") if isinstance(p, bytes) else p for p, c in parts)


# --------------------------------------------------------------------------- header_safe


UNSAFE = [
    "\x00", "\t", "\n", "\r", "\x1f", "\x7f", "\x80", "\x9f",
    "\u2028", "\u2029", "\ufeff", "\u202a", "\u202e", "\u2066", "\u2069",
]  # fmt: skip
SAFE_NEIGHBOURS = [" ", "~", "\xa0", "\u2027", "\u202f", "\u2065", "\u206a", "\ufefe", "é"]


@pytest.mark.parametrize("char", UNSAFE)
def test_header_safe_refuses_every_control_range(char: str) -> None:
    with pytest.raises(ValueError) as caught:
        header_safe(f"a{char}b")
    assert str(caught.value) == (
        "control characters (CR, LF, ...) are not allowed in a mail header"
    )


@pytest.mark.parametrize("char", SAFE_NEIGHBOURS)
def test_header_safe_keeps_the_characters_next_to_the_ranges(char: str) -> None:
    assert header_safe(f"a{char}b") == f"a{char}b"


def test_header_safe_refuses_an_encoded_word_start() -> None:
    with pytest.raises(ValueError) as caught:
        header_safe("Hi =?utf-8?q?x?=")
    assert str(caught.value) == "'=?' (an RFC 2047 encoded-word) is not allowed in a mail header"
    assert header_safe("a = b ? c") == "a = b ? c"


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize("char", UNSAFE)
def test_clean_header_text_drops_control_characters(char: str) -> None:
    assert clean_header_text(f"An{char}a") in {"Ana", "An a"}


def test_clean_header_text_collapses_whitespace_and_trims() -> None:
    assert clean_header_text("  An\x00a \r\n\t Pérez\u2028  ") == "Ana Pérez"
    assert clean_header_text("a  \t b") == "a b"
    assert clean_header_text("\r\n") == ""


def test_without_specials_turns_every_special_into_one_space() -> None:
    assert without_specials('a,b;c:d<e>f@g"h(i)j[k]l\\m') == "a b c d e f g h i j k l m"
    assert without_specials(" ,,Ana ;; Pérez@@ ") == "Ana Pérez"
    assert without_specials("Ana.Pérez-O'Neil") == "Ana.Pérez-O'Neil"


# --------------------------------------------------------------------------- encoded words


def test_an_encoded_word_is_base64_utf8() -> None:
    assert encoded_words("é") == ["=?utf-8?b?w6k=?="]
    assert encoded_words("") == []


def test_a_word_breaks_just_after_a_space() -> None:
    assert encoded_words("aaaa bbbb", max_bytes=6) == [word("aaaa "), word("bbbb")]


def test_a_word_without_a_space_breaks_at_the_byte_limit() -> None:
    assert encoded_words("abcdefgh", max_bytes=3) == [word("abc"), word("def"), word("gh")]


def test_a_space_at_the_very_end_of_a_full_chunk_stays_in_it() -> None:
    assert encoded_words("abc defg", max_bytes=4) == [word("abc "), word("defg")]


def test_a_break_after_a_leading_space_keeps_the_space_as_its_own_word() -> None:
    assert encoded_words(" abcd", max_bytes=3) == [word(" "), word("abc"), word("d")]


def test_a_multibyte_character_is_never_split() -> None:
    assert encoded_words("ééé", max_bytes=3) == [word("é"), word("é"), word("é")]
    assert encoded_words("ééé", max_bytes=4) == [word("éé"), word("é")]
    assert encoded_words("a€", max_bytes=4) == [word("a€")]


def test_the_default_word_holds_39_bytes() -> None:
    words = encoded_words("x" * 40)
    assert words == [word("x" * 39), word("x")]
    assert len(words[0]) == 64


# --------------------------------------------------------------------------- folding


def test_fold_words_puts_the_first_word_on_the_name_line() -> None:
    assert fold_words("Subject", ["Hi"]) == "Subject: Hi\r\n"
    assert fold_words("Subject", []) == "Subject:\r\n"
    long = "x" * 90
    assert fold_words("Subject", [long, "y"]) == f"Subject: {long}\r\n y\r\n"


def test_fold_words_fills_a_line_to_exactly_78() -> None:
    first = "a" * (MAX_LINE - len("Subject: ") - 2)  # leaves room for " b"... minus one
    fits = fold_words("Subject", [first, "b"])
    assert fits == f"Subject: {first} b\r\n"
    assert len(fits.split("\r\n")[0]) == MAX_LINE
    folds = fold_words("Subject", [first, "bc"])
    assert folds == f"Subject: {first}\r\n bc\r\n"


def test_fold_words_counts_the_continuation_lines_too() -> None:
    words = ["w" * 38] * 4
    folded = fold_words("X", words)
    assert folded == f"X: {words[0]}\r\n {words[1]} {words[2]}\r\n {words[3]}\r\n"
    assert max(len(line) for line in folded.split("\r\n")) <= MAX_LINE


# --------------------------------------------------------------------------- unstructured


def test_unstructured_leaves_plain_words_readable() -> None:
    assert unstructured("Subject", "Morning  briefing\r\n") == "Subject: Morning briefing\r\n"


def test_unstructured_encodes_only_the_runs_that_need_it() -> None:
    value = unstructured("Subject", "Hello wörld ünd more")
    assert value == f"Subject: Hello {word('wörld ünd')} more\r\n"
    assert decoded(value[len("Subject: ") : -2]) == "Hello wörld ünd more"


def test_unstructured_encodes_a_trailing_run() -> None:
    assert unstructured("Subject", "Café") == f"Subject: {word('Café')}\r\n"


def test_unstructured_encodes_a_word_that_looks_encoded() -> None:
    value = unstructured("Subject", "a =?utf-8?q?x?= b")
    assert value == f"Subject: a {word('=?utf-8?q?x?=')} b\r\n"


def test_unstructured_keeps_a_70_character_word_and_encodes_a_71() -> None:
    assert unstructured("S", "y" * 70) == f"S: {'y' * 70}\r\n"
    assert unstructured("S", "y" * 71) == f"S: {word('y' * 39)}\r\n {word('y' * 32)}\r\n"


def test_unstructured_folds_long_subjects_under_78() -> None:
    value = unstructured("Subject", " ".join(["Ünïcode"] * 20))
    lines = value.split("\r\n")
    assert lines[-1] == ""
    assert all(len(line) <= MAX_LINE for line in lines)
    assert decoded(value[len("Subject: ") : -2]) == " ".join(["Ünïcode"] * 20)


# --------------------------------------------------------------------------- phrases


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ana", "Ana"),
        ("Ana O'Neil-Pérez", word("Ana O'Neil-Pérez")),
        ("Ana O'Neil", "Ana O'Neil"),
        ("Dr. Ana", '"Dr. Ana"'),
        ("", ""),
        ("  \r\n ", ""),
        (",;<>", ""),
        ("Bob, attacker@evil.example", '"Bob attacker evil.example"'),
        ('x\\", evil@attacker.example, "y', '"x evil attacker.example y"'),
        ("=?utf-8?q?x?=", word("=?utf-8?q?x?=")),
    ],
)
def test_phrase(name: str, expected: str) -> None:
    assert phrase(name) == expected


def test_a_plain_phrase_up_to_60_characters_stays_readable() -> None:
    assert phrase("a" * 60) == "a" * 60
    assert phrase("a." + "a" * 58) == '"a.' + "a" * 58 + '"'
    assert phrase("a" * 61) == f"{word('a' * 39)}\r\n {word('a' * 22)}"


def test_a_non_ascii_phrase_is_encoded_words_folded_with_a_space() -> None:
    name = "Ålice " * 8
    assert phrase(name) == "\r\n ".join(encoded_words(name.strip()))
    assert decoded(phrase(name)) == name.strip()


# --------------------------------------------------------------------------- addresses


def test_addr_spec_keeps_a_plain_address() -> None:
    assert addr_spec("Ana.Perez+news@Example.org") == "Ana.Perez+news@Example.org"


def test_addr_spec_turns_an_idn_domain_into_ascii() -> None:
    assert addr_spec("ana@bücher.example") == "ana@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("anä@x.example", "address 'anä@x.example' needs SMTPUTF8, which is not supported"),
        ("bücher", "address 'bücher' needs SMTPUTF8, which is not supported"),
        (f"a@{'x' * 64}ü.example", f"address 'a@{'x' * 64}ü.example' has an invalid domain"),
        ("a b@x.example", "address 'a b@x.example' cannot be used in a mail header"),
        ("a\x01b@x.example", "address 'a\\x01b@x.example' cannot be used in a mail header"),
        ("a@x.example-", "address 'a@x.example-' cannot be used in a mail header"),
        ("a@-x.example", "address 'a@-x.example' cannot be used in a mail header"),
        ("a@", "address 'a@' cannot be used in a mail header"),
        (
            "=?utf-8?q?x?=@x.example",
            "address '=?utf-8?q?x?=@x.example' contains an RFC 2047 encoded word",
        ),
    ],
)
def test_addr_spec_refuses_with_a_reason(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        addr_spec(value)
    assert str(caught.value) == message


def test_addr_spec_accepts_one_letter_domains_and_hyphens_inside() -> None:
    assert addr_spec("a@x") == "a@x"
    assert addr_spec("a@x-y.example") == "a@x-y.example"


def test_address() -> None:
    assert address("", "a@x.example") == "a@x.example"
    assert address("Ana", "a@x.example") == "Ana <a@x.example>"
    assert address("Ana", "a@bücher.example") == "Ana <a@xn--bcher-kva.example>"
    with pytest.raises(ValueError):
        address("Ana", "not an address")


# --------------------------------------------------------------------------- List-Id


def test_list_id_slug_drops_accents_and_punctuation() -> None:
    assert list_id("The Daily Ünïon!", "news@daily.example") == (
        f"{word('The Daily Ünïon!')} <the-daily-union.daily.example>"
    )
    assert (
        list_id("Morning Post", "news@post.example") == "Morning Post <morning-post.post.example>"
    )


def test_list_id_slug_is_at_most_60_characters_without_edge_hyphens() -> None:
    name = "a" * 59 + " b" + "c" * 10
    value = list_id(name, "news@x.example")
    assert value.endswith(f"<{'a' * 59}.x.example>")


def test_list_id_falls_back_to_the_local_part_then_to_newsletter() -> None:
    assert list_id("!!!", "News.Desk@x.example") == "!!! <news-desk.x.example>"
    assert list_id("", "news@x.example") == "<news.x.example>"
    assert list_id("", "+@x.example") == "<newsletter.x.example>"


def test_list_id_domain_is_the_ascii_form() -> None:
    assert list_id("Post", "news@bücher.example") == "Post <post.xn--bcher-kva.example>"


# --------------------------------------------------------------------------- more edges


def test_unstructured_encodes_each_run_between_plain_words() -> None:
    value = unstructured("Subject", "ä b ö c ü")
    assert value == f"Subject: {word('ä')} b {word('ö')} c {word('ü')}\r\n"


def test_unstructured_keeps_plain_words_before_a_trailing_run() -> None:
    assert unstructured("Subject", "Hello Café") == f"Subject: Hello {word('Café')}\r\n"


def test_an_empty_unstructured_value_is_an_empty_header() -> None:
    assert unstructured("Subject", "") == "Subject:\r\n"
    assert unstructured("Subject", " \r\n ") == "Subject:\r\n"


def test_a_word_breaks_after_the_last_space_that_fits() -> None:
    assert encoded_words("ab cd ef", max_bytes=7) == [word("ab cd "), word("ef")]


def test_addr_spec_splits_an_idn_address_at_the_last_at_sign() -> None:
    with pytest.raises(ValueError) as caught:
        addr_spec("a@b@bücher.example")
    assert (
        str(caught.value) == "address 'a@b@xn--bcher-kva.example' cannot be used in a mail header"
    )


def test_list_id_trims_hyphens_before_it_cuts_at_60() -> None:
    value = list_id("!" + "a" * 65, "news@x.example")
    assert value.endswith(f" <{'a' * 60}.x.example>")
