"""Stop strings: does a completion's decoded text now contain one, decoding only its tail.

Meant to be called after every new token, so a stop string is found on the step whose token
completes it; each call decodes a few tokens, not the whole completion. Only completion tokens are
passed in, so a stop string in the prompt never matches. Deliberately not here: truncating the text
at the match (the tokens that produced it are what was sampled and what gets trained), EOS ids and
length limits (the caller checks those on token ids).
"""

from __future__ import annotations

from typing import Callable, Sequence

# Characters of slack at the start of a decoded tail: a tail that starts inside a multi-byte
# character decodes to U+FFFD there, and SentencePiece drops the leading space of the first piece.
SLACK = 4


def find_stop(completion: Sequence[int], decode: Callable[[list[int]], str], stops: Sequence[str]) -> str | None:
    """The first of `stops` that the text of `completion` (token ids) contains, or None.

    Decodes the last tokens only: enough that the text before the newest token holds the longest
    stop string plus SLACK characters, so an occurrence that the newest token completes is seen.
    """
    if not stops or not completion:
        return None
    longest = max(len(s) for s in stops)
    n = min(len(completion), longest + SLACK + 1)  # usually enough: most tokens decode to >= 1 character
    while n < len(completion) and len(decode(list(completion[-n:-1]))) < longest + SLACK:
        n = min(len(completion), 2 * n)
    text = decode(list(completion[-n:]))
    return next((s for s in stops if s in text), None)
