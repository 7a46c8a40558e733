"""The routing headers: ``x-router-reason`` is the decision's reason as one plain ASCII line, whatever it holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.proxy.fastpath import ascii_header

_ARROWS = {"\u2192": "->", "\u2265": ">=", "\u2264": "<=", "\u2248": "~"}


def cleaned(text: str, limit: int) -> str:
    """What a header value must be: arrows spelled in ASCII, every run of whitespace one space, no space at either
    end, anything else outside ASCII a '?', at most ``limit`` characters."""
    for arrow, ascii_form in _ARROWS.items():
        text = text.replace(arrow, ascii_form)
    return " ".join(text.split()).encode("ascii", "replace").decode("ascii")[:limit]


# what reasons are made of, and what could break a header: arrows, spaces of every kind, controls, other Unicode
_PIECES = st.sampled_from([*_ARROWS, " ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003",
                           "\x00", "\x7f", "é", "€", "😀", "a", "Z", "0", ";", "(", "≥ 0.80", "→ smollm2"])


# plain ASCII with runs of spaces too: the text the router writes, and its near misses
_PLAIN = st.text(alphabet=" ab;.->0", max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES | _PLAIN | st.text(max_size=8), max_size=40), st.sampled_from([0, 1, 10, 400]))
def test_the_reason_header_is_one_clean_ascii_line(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    assert ascii_header(text, limit) == cleaned(text, limit)


def test_a_reason_the_router_writes_keeps_its_words() -> None:
    reason = "chat task → remote-echo; predicted 0.81 ≥ target 0.72 (90% of remote-echo's 0.80); 1.3 J"
    assert ascii_header(reason) == ("chat task -> remote-echo; predicted 0.81 >= target 0.72 (90% of remote-echo's "
                                    "0.80); 1.3 J")
    assert ascii_header(reason, 10) == "chat task "
