"""Stamp order across input streams: which message to take, drop, or treat as a new run.

A stream's stamp must be after its previous one. A small step back is out of order (dropped).
A big step back (more than `reset_backwards_s`) is either a new run (a looping bag, a restarted
recording: every stream goes back and stays back) or a lone stamp out of line (a driver
hiccup: the next message of that stream is in line again). One message cannot tell them apart,
so a big step back is held as a candidate and its message dropped; the jump is believed (the
caller resets) once

- the same stream has sent `confirm_messages` increasing stamps on the new time line, or
- two streams have each sent at least two increasing stamps on a new time line (they agree).

A message in line again clears the stream's candidate: the jump was a glitch, and its messages
were dropped and counted as `stamp_out_of_line`.
"""

from __future__ import annotations

from typing import Optional

NS_PER_S = 1_000_000_000

# Verdicts of StampGuard.check.
ACCEPT = 'accept'
OUT_OF_ORDER = 'out_of_order'        # small step back: drop
OUT_OF_LINE = 'stamp_out_of_line'    # big step back not (yet) believed: drop
NEW_RUN = 'time_backwards'           # the streams agree on a jump back: reset, then accept


class StampGuard:
    """Per-stream stamp bookkeeping for a set of named streams (see module docstring)."""

    def __init__(self, streams, reset_backwards_s: float, confirm_messages: int = 5,
                 agree_messages: int = 2):
        self.streams = tuple(streams)
        self.reset_backwards_ns = int(reset_backwards_s * NS_PER_S)
        self.confirm_messages = int(confirm_messages)
        self.agree_messages = int(agree_messages)
        self.clear()

    def clear(self) -> None:
        """Forget every stream's last stamp and candidate (after a reset)."""
        self.last: dict = {stream: None for stream in self.streams}
        # stream -> (newest candidate stamp ns, consecutive increasing candidates)
        self._candidates: dict = {}

    def check(self, stream: str, t_ns: int) -> str:
        """Verdict for a message of `stream` stamped `t_ns`; updates the bookkeeping."""
        last = self.last[stream]
        if last is None or t_ns > last:
            self._candidates.pop(stream, None)  # in line: a held jump was a glitch
            self.last[stream] = t_ns
            return ACCEPT
        if last - t_ns <= self.reset_backwards_ns:
            return OUT_OF_ORDER
        previous = self._candidates.get(stream)
        count = previous[1] + 1 if previous is not None and t_ns > previous[0] else 1
        self._candidates[stream] = (t_ns, count)
        if count >= self.confirm_messages or self._streams_agree():
            return NEW_RUN
        return OUT_OF_LINE

    def _streams_agree(self) -> bool:
        deep = [stream for stream, (_, count) in self._candidates.items()
                if count >= self.agree_messages]
        return len(deep) >= 2

    def held(self, stream: str) -> Optional[int]:
        """Consecutive held stamps of `stream` on a new time line, or None."""
        candidate = self._candidates.get(stream)
        return None if candidate is None else candidate[1]
