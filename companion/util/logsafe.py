"""Text from outside (a CA's error, nginx's or Docker's output) made safe for a one-line log (pure)."""

from __future__ import annotations

import re

# C0 (tab and newline too), DEL, C1, the line and paragraph separators, the bidi embeddings and
# overrides (U+202A-U+202E) and isolates (U+2066-U+2069), and lone surrogates (which no encoder writes).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every terminal control or line-breaking character shown as \\xNN or \\uNNNN.

    Ordinary Unicode (letters, punctuation, emoji) is kept, so "bücher" stays readable. A terminal
    reading the log never receives an escape sequence, and a message never spans two lines.
    """
    return _UNSAFE.sub(_escape, text)
