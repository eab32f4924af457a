"""NMEA 0183 byte stream → sentence lines: framing only, no parsing.

A serial port delivers chunks of any size: a sentence may be split across reads, binary (u-blox
UBX frames, noise after a baud-rate change) and non-UTF-8 bytes may sit between sentences, a line
may be cut off by a new `$`. `SentenceSplitter.feed()` returns the complete lines that start with
`$` or `!`, end with CR, LF or CRLF and hold a comma, and reports what it drops through
`skip(kind, detail)`: "garbage" (a stretch of bytes between sentences that is not one, once per
stretch, including a comma-less "line" that a `$` byte inside binary data started), "overlong" (a
line longer than `max_chars`) and "truncated" (a line cut by a new sentence, or left at `flush()`).
What it reports does not depend on how the stream was cut into chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_START = re.compile(rb"[$!]")
_BODY = re.compile(rb"[\x20\x22\x23\x25-\x7e]*")  # printable ASCII except the start characters $ and !
_LINE_END = frozenset(b"\r\n")
_DETAIL_CHARS = 40  # of a dropped line, shown in its report


class SentenceSplitter:
    def __init__(self, max_chars: int, skip: Callable[[str, str], None]) -> None:
        self._max_chars = max_chars
        self._skip = skip
        self._line: bytearray | None = None  # the sentence being assembled, from its `$`
        self._garbage_counted = False  # the current stretch of garbage was counted already
        # a whole line within this chunk, `$` to line end, short enough: the common case, taken in one match
        self._whole_line = re.compile(rb"[$!][\x20\x22\x23\x25-\x7e]{0,%d}[\r\n]" % (max_chars - 1))

    def feed(self, data: bytes) -> list[str]:
        """Consume a chunk of any size; return the lines it completed (ASCII, without CR/LF)."""
        lines: list[str] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._line is None:
                start = _START.search(data, pos)
                stop = end if start is None else start.start()
                if not self._garbage_counted and data[pos:stop].strip(b"\r\n"):  # more than line ends
                    self._garbage(data[pos:stop])
                if start is None:
                    break
                whole = self._whole_line.match(data, stop)
                if whole is not None:
                    pos = whole.end()
                    self._end_line(data[stop : pos - 1], lines)
                    continue
                self._line = bytearray(data[stop : stop + 1])
                pos = stop + 1
                continue
            body = _BODY.match(data, pos)
            assert body is not None  # the pattern matches the empty string
            self._line += body.group()
            pos = body.end()
            if len(self._line) > self._max_chars:
                self._skip("overlong", f"line longer than {self._max_chars} characters: {self._text()}...")
                self._line = None
                self._garbage_counted = True  # the rest of that line is part of the same fault
                continue
            if pos >= end:
                break  # wait for the rest of the line
            byte = data[pos]
            if byte in _LINE_END:
                self._end_line(bytes(self._line), lines)
                self._line = None
                pos += 1
            elif byte in b"$!":  # a new sentence started before this one ended
                if b"," in self._line:
                    self._skip("truncated", f"cut off by a new sentence: {self._text()}")
                else:
                    self._skip("garbage", f"not a sentence: {self._text()}")
                self._line = bytearray(data[pos : pos + 1])
                pos += 1
            else:
                self._line = None  # binary in the middle of a sentence: not a sentence
                self._garbage(data[pos : pos + 1])
                pos += 1
        return lines

    def flush(self) -> None:
        """End of stream: a partial line is dropped and reported "truncated"."""
        if self._line is not None:
            self._skip("truncated", f"stream ended inside a line: {self._text()}")
            self._line = None

    def _end_line(self, line: bytes, lines: list[str]) -> None:
        self._garbage_counted = False
        if b"," in line:
            lines.append(line.decode("ascii"))
        else:  # not even the shape of a sentence: a `$` byte inside binary data
            self._garbage(line)

    def _text(self) -> str:
        assert self._line is not None
        return self._line[:_DETAIL_CHARS].decode("ascii")

    def _garbage(self, sample: bytes) -> None:
        if not self._garbage_counted:
            self._skip("garbage", f"bytes between sentences: {sample[:_DETAIL_CHARS]!r}")
            self._garbage_counted = True
