"""A console log's tail for error messages: the last lines, reaching back to the first splat."""

from __future__ import annotations

from pathlib import Path

from harness.vm import dmesg

TAIL_LINES = 40
MAX_TAIL_LINES = 150  # a tail grows to this to keep a whole panic dump


def console_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-empty lines of a console log, escapes and \\r removed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            raw = handle.read()
    except OSError:
        return "(no console log)"
    text = dmesg.clean_console(raw.decode(errors="replace"))
    kept = [line.rstrip() for line in text.split("\n") if line.strip()]
    return "\n".join(kept[_tail_start(kept, lines) :]) or "(console log is empty)"


def _tail_start(kept: list[str], lines: int) -> int:
    """Where the tail starts: `lines` from the end, or earlier so that it holds the first
    splat of the last MAX_TAIL_LINES lines and the two lines before it (what triggered it)."""
    start = max(0, len(kept) - lines)
    window = max(0, len(kept) - MAX_TAIL_LINES)
    splats = dmesg.scan_splats([dmesg.strip_prefix(line) for line in kept[window:]])
    if splats:
        start = min(start, window + max(0, splats[0].index - 2))
    return start
