"""Reading a final answer out of model text: `\\boxed{}`, GSM8K `#### x`, "the answer is x", and the
rules a prediction must meet before anything compares it (not empty, not too long, not a hedge).

Pure string work on untrusted text: regular expressions with bounded scans, no `eval`, no sympy.
Deliberately not here: deciding whether two answers are equal (exact.py and worker.py do that).
"""

import re

MAX_ANSWER_CHARS = 1000  # longer extracted answers fail instead of going to sympy
QUOTE_CHARS = 80  # an answer quoted in `details` is cut to this many characters

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s")
_LATEX_SPACING = re.compile(r"\\[,!;: ]")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER_THEN_WORDS = re.compile(r"([+-]?\d[\d,]*(?:\.\d+)?)(?:\s+[A-Za-z]{3,})+")
_HEDGE = re.compile(r"\b(?:or|either)\b", re.IGNORECASE)


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the brace closing `text[open_at]`, skipping `\\{` `\\}`; None if not closed soon enough."""
    depth, i, stop = 0, open_at, min(len(text), open_at + MAX_ANSWER_CHARS + 2)
    while i < stop:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return i
        i += 1
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of the top-level `\\boxed{...}` in order; an unclosed one yields what follows it."""
    found, pos = [], 0
    while (match := _BOXED.search(text, pos)) is not None:
        close = _closing_brace(text, match.end() - 1)
        if close is None:  # unclosed or over-long: keep a prefix that fails the length check if long
            found.append(text[match.end() : match.end() + MAX_ANSWER_CHARS + 1])
            break
        found.append(text[match.end() : close])
        pos = close + 1
    return found


def gsm8k_answer(text: str) -> str | None:
    """The rest of the last `####` line (GSM8K's answer marker), stripped; None when there is none."""
    hits = _GSM8K.findall(text)
    return hits[-1].strip() if hits else None


def extract_final_answer(text: str) -> str | None:
    """The last `\\boxed{}` content (as the MATH graders read several), else the rest of the last `####`
    line, else the last "answer is X"; a sentence end (". ") cuts the latter two."""
    boxed = boxed_contents(text)
    if boxed:
        return boxed[-1]
    hit = gsm8k_answer(text)
    if hit is None:
        hits = _ANSWER_IS.findall(text)
        hit = hits[-1] if hits else None
    return None if hit is None else _SENTENCE_END.split(hit)[0]


def normalise(answer: str) -> str:
    """Drop `$`, LaTeX spacing, extra whitespace, a trailing period, thousands commas, trailing words."""
    s = answer.replace("\\$", "").replace("$", "")
    s = " ".join(_LATEX_SPACING.sub("", s).split())
    s = re.sub(r"\.$", "", s).strip()
    if (match := _NUMBER_THEN_WORDS.fullmatch(s)) is not None:  # "42 apples" -> "42"
        s = match.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def quote(s: str) -> str:
    """Quote an answer for `details` (not repr: LaTeX backslashes stay single)."""
    return "'" + (s if len(s) <= QUOTE_CHARS else s[:QUOTE_CHARS] + "...") + "'"


def prediction(completion: str) -> tuple[str, str | None]:
    """(normalised final answer, None) or ("", why it fails before any comparison)."""
    raw = extract_final_answer(completion)
    pred = normalise(raw) if raw is not None else ""
    if not pred:
        return "", "no final answer found"
    if len(pred) > MAX_ANSWER_CHARS:
        return "", f"final answer longer than {MAX_ANSWER_CHARS} characters"
    if _HEDGE.search(pred):
        return "", f"hedged answer {quote(pred)}"
    return pred, None
