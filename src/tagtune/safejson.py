"""JSON from files a user hands tagtune, parsed within bounds.

Python's json module recurses once per level of nesting (100,000 ``[`` raise RecursionError),
refuses integers of more than 4,300 digits with a ValueError, and accepts ``NaN`` and
``Infinity``, which are not JSON and which tagtune would copy into the JSON it writes. Here each
of these is a :class:`JsonLimitError` that says what is wrong and on which line, and a syntax
error is json's own :class:`json.JSONDecodeError`, so a caller reports both as
``file:line: ...``.

The bounds, in one place:

=====================  ====================================================================
``MAX_DEPTH``          lists and objects nested inside each other (Label Studio's export,
                       the deepest format tagtune reads, needs 8)
``MAX_NUMBER_CHARS``   characters of one number (integer or float)
``EXCERPT_CHARS``      characters of a value quoted in an error message, then ``…``
=====================  ====================================================================

Numbers must also be finite (``1e999`` is out of range), and strings must be valid Unicode: a
``\\ud800`` escape without its pair is refused, as it cannot be written back out as UTF-8.
"""

from __future__ import annotations

import json
import math
import re

from tagtune.errors import TagtuneError
from tagtune.files import read_bytes, read_error

MAX_DEPTH = 100
MAX_NUMBER_CHARS = 100
EXCERPT_CHARS = 40

_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING, re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")
_STRING_OR_BRACKET = re.compile(_STRING + r"|[\[\]{}]", re.S)
# A \u escape of a high surrogate not followed by one of a low surrogate, or of a low surrogate
# not preceded by one of a high surrogate. An odd run of backslashes makes an escape; an even
# one is escaped backslashes followed by a plain "u".
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\)(?:\\\\)*(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` of a string, ``str(value)`` of anything else, cut to ``limit``
    characters followed by ``…``."""
    try:
        text = repr(value) if isinstance(value, str) else str(value)
    except ValueError:  # an int too long for str()
        return f"an integer of {value.bit_length():,} bits"
    return cut(text, limit)


def cut(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters followed by ``…``, or as it is when that short."""
    return text if len(text) <= limit else text[:limit] + "…"


class JsonLimitError(ValueError):
    """JSON beyond one of the bounds above. ``msg`` says what; ``lineno`` (1-based) and ``pos``
    (character index) say where."""

    def __init__(self, msg: str, doc: str, pos: int):
        super().__init__(msg)
        self.msg = msg
        self.pos = pos
        self.lineno = doc.count("\n", 0, pos) + 1


class _Refused(Exception):
    """Raised inside the decoder's hooks; ``token`` is the text refused, located afterwards."""

    def __init__(self, msg: str, token: str):
        super().__init__(msg)
        self.msg = msg
        self.token = token


def _too_long(text: str) -> _Refused:
    return _Refused(f"the number {cut(text)} is {len(text):,} characters long (at most {MAX_NUMBER_CHARS})",
                    text)


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _too_long(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _too_long(text)
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {cut(text)} is out of range", text)
    return value


def _parse_constant(name: str):
    raise _Refused(f"{name} is not a JSON number (write a number or null)", name)


DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def _outside_strings(text: str, token: str, start: int = 0) -> int:
    """Where ``token`` first occurs in ``text`` from ``start`` on, outside JSON strings."""
    pattern = re.compile(_STRING + "|" + re.escape(token), re.S)
    for match in pattern.finditer(text, start):
        if not match.group().startswith('"'):
            return match.start()
    return start


def _too_deep(text: str) -> bool:
    """Whether lists and objects in ``text`` nest deeper than MAX_DEPTH (False also where its
    brackets do not pair up: that is not JSON, as the decoder then says)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    # The brackets alone (strings removed): each pass takes out the innermost pairs, so a pair
    # still there after MAX_DEPTH passes is nested deeper than that.
    brackets = _NOT_BRACKET.sub("", _STRINGS.sub("", text))
    for _ in range(MAX_DEPTH):
        brackets, removed = _PAIR.subn("", brackets)
        if not removed or not brackets:
            return False
    return bool(_PAIR.search(brackets))


def _deep_position(text: str, start: int = 0) -> int:
    """Where the nesting of ``text`` (from ``start``) first goes deeper than MAX_DEPTH."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text, start):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif char in "]}":
            depth -= 1
    return start


def _too_deep_error(text: str, start: int = 0) -> JsonLimitError:
    return JsonLimitError(f"lists and objects nested more than {MAX_DEPTH} deep", text, _deep_position(text, start))


def check(text: str) -> None:
    """Raise :class:`JsonLimitError` if ``text`` nests deeper than MAX_DEPTH or holds half a
    surrogate pair (the bounds seen in the text; numbers are bounded while decoding)."""
    if _too_deep(text):
        raise _too_deep_error(text)
    if "\\u" in text:
        match = _LONE_SURROGATE.search(text)
        if match is not None:
            group = 1 if match.group(1) else 2
            raise JsonLimitError(f"the escape {match.group(group)} is half of a surrogate pair, without the "
                                 "other half (not a character)", text, match.start(group))


def raw_decode(text: str, index: int = 0):
    """``(value, end)`` of the JSON value at ``text[index:]`` (after :func:`check` of ``text``);
    raises :class:`json.JSONDecodeError` for a syntax error, :class:`JsonLimitError` for a bound."""
    try:
        return DECODER.raw_decode(text, index)
    except _Refused as e:
        raise JsonLimitError(e.msg, text, _outside_strings(text, e.token, index)) from None
    except RecursionError:  # unbalanced brackets, too deep to reach the syntax error
        raise _too_deep_error(text, index) from None


def loads(text: str):
    """``json.loads(text)`` within the bounds: :class:`json.JSONDecodeError` for a syntax error
    (as json.loads), :class:`JsonLimitError` for a bound."""
    check(text)
    try:
        return DECODER.decode(text)
    except _Refused as e:
        raise JsonLimitError(e.msg, text, _outside_strings(text, e.token)) from None
    except RecursionError:  # unbalanced brackets, too deep to reach the syntax error
        raise _too_deep_error(text) from None


def shown(value: object, name_numbers: bool = True) -> str:
    """A JSON value as an error message names it: short, with its kind (``null``, ``true``,
    ``the number 3``, ``the string 'x'``, ``a list``, ``an object``); ``name_numbers`` False
    gives a number as it is (``3``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {excerpt(value)}" if name_numbers else excerpt(value)
    if isinstance(value, str):
        return f"the string {excerpt(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def read_object(path, max_bytes: int | None = None) -> dict:
    """The JSON object in the file ``path``, within the bounds; anything else (unreadable, over
    ``max_bytes``, not UTF-8, not JSON, not an object) is a one-line TagtuneError that names the
    file and, where it applies, the line."""
    from pathlib import Path

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise read_error(path, e) from None
    if max_bytes is not None and size > max_bytes:
        raise TagtuneError(f"{path}: {size:,} bytes is too large for this file (at most {max_bytes:,})")
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TagtuneError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    try:
        value = loads(text)
    except json.JSONDecodeError as e:
        raise TagtuneError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except JsonLimitError as e:
        raise TagtuneError(f"{path}:{e.lineno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise TagtuneError(f"{path}: expected a JSON object, got {shown(value)}")
    return value
