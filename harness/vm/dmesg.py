"""Kernel log text: prefixes, canaries, splats and taint flags. Pure functions over text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# util-linux `dmesg` prints "[    1.234567] msg"; /dev/kmsg-style and console captures may
# carry "<6>" before it. Console logs also carry \r and terminal escapes.
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")

CANARY_TAG = "klp-harness: canary"


def clean_console(text: str) -> str:
    """Console bytes as plain lines: no terminal escapes, no carriage returns."""
    text = _ANSI.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_prefix(line: str) -> str:
    """The message of one dmesg line, without level and timestamp."""
    return _PREFIX.sub("", line, count=1)


def messages(text: str) -> list[str]:
    """Every non-empty line of a dmesg text, prefixes stripped."""
    out = []
    for line in clean_console(text).split("\n"):
        msg = strip_prefix(line).rstrip()
        if msg:
            out.append(msg)
    return out


def canary_line(label: str, token: str) -> str:
    """The line written to /dev/kmsg before a step; `label` becomes one shell-safe word."""
    word = re.sub(r"[^A-Za-z0-9_.:+-]+", "_", label.strip()) or "step"
    return f"{CANARY_TAG} {word} {token}"


def lines_since(text: str, canary: str) -> list[str] | None:
    """The messages after the last line that is exactly `canary`; None when it is absent.

    Exact match, so a later canary whose label extends this one is not taken for it.
    """
    msgs = messages(text)
    for index in range(len(msgs) - 1, -1, -1):
        if msgs[index].strip() == canary:
            return msgs[index + 1 :]
    return None


# What a splat is, as samples name it in an allow list (expect.toml).
SplatKind = Literal[
    "Oops", "BUG", "kernel BUG", "WARNING", "general protection fault", "Kernel panic",
    "Call Trace", "KASAN", "UBSAN", "KFENCE", "RCU stall", "hung task", "list corruption",
    "refcount", "unable to handle", "symbol version",
]  # fmt: skip
# Case-sensitive, whole words: a case-insensitive "oops" matches the ordinary
# "loops_per_jiffy" line under TCG.
_PATTERNS: tuple[tuple[SplatKind, str], ...] = (
    ("Oops", r"(?<![\w-])Oops\b"),
    ("BUG", r"(?<![\w-])BUG:"),
    ("kernel BUG", r"\bkernel BUG at\b"),
    ("WARNING", r"(?<![\w-])WARNING:"),
    ("general protection fault", r"\bgeneral protection fault\b"),
    ("Kernel panic", r"\bKernel panic\b"),
    ("Call Trace", r"\bCall Trace:"),
    ("KASAN", r"\bKASAN:"),
    ("UBSAN", r"\bUBSAN:"),
    ("KFENCE", r"\bKFENCE:"),
    ("RCU stall", r"\brcu: INFO: \w+ (?:self-)?detected stalls?\b"),
    ("hung task", r"\bINFO: task .* blocked for more than\b"),
    ("list corruption", r"\blist_(?:add|del) corruption\b"),
    ("refcount", r"\brefcount_t: "),
    ("unable to handle", r"\bUnable to handle kernel\b"),
    # The module loader's modversions complaints: a converted module (the livepatch guard's
    # __versions entry included) must carry the target's CRCs.
    ("symbol version", r"\bno symbol version for\b|\bdisagrees about version of symbol\b"),
)
SPLAT_PATTERNS = tuple((kind, re.compile(pattern)) for kind, pattern in _PATTERNS)


@dataclass(frozen=True)
class Splat:
    kind: SplatKind
    line: str  # the message that matched
    index: int  # its position in the scanned list


TRACE_OF_SPLAT = 40  # a "Call Trace" this many lines after another splat belongs to it


def scan_splats(lines: list[str]) -> list[Splat]:
    """Every line that looks like a kernel splat, with the first pattern it matched.

    The "Call Trace" of a WARNING or Oops is part of that report and is not listed again;
    a bare one (dump_stack) is.
    """
    found: list[Splat] = []
    for index, line in enumerate(lines):
        for kind, pattern in SPLAT_PATTERNS:
            if pattern.search(line):
                owned = found and index - found[-1].index <= TRACE_OF_SPLAT
                if not (kind == "Call Trace" and owned):
                    found.append(Splat(kind, line, index))
                break
    return found


def last_splat(text: str) -> str | None:
    """The last splat message of a console or dmesg text (the panic line when it panicked)."""
    splats = scan_splats(messages(text))
    return splats[-1].line if splats else None


# kernel/panic.c taint_flags, bit -> letter (bit 0 reads 'G' when clear).
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTNJ"
TAINT_NAMES = (
    "PROPRIETARY_MODULE", "FORCED_MODULE", "CPU_OUT_OF_SPEC", "FORCED_RMMOD",
    "MACHINE_CHECK", "BAD_PAGE", "USER", "DIE", "OVERRIDDEN_ACPI_TABLE", "WARN", "CRAP",
    "FIRMWARE_WORKAROUND", "OOT_MODULE", "UNSIGNED_MODULE", "SOFTLOCKUP", "LIVEPATCH",
    "AUX", "RANDSTRUCT", "TEST", "FWCTL",
)  # fmt: skip


def taint_letters(value: int) -> str:
    """The set flags as letters, e.g. 12288 -> "OE"; unknown bits as "?<bit>"."""
    out = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            out.append(TAINT_LETTERS[bit] if bit < len(TAINT_LETTERS) else f"?{bit}")
    return "".join(out)


def taint_describe(value: int) -> str:
    """`12288` -> "OE (OOT_MODULE, UNSIGNED_MODULE)"; 0 -> "none"."""
    if value == 0:
        return "none"
    names = [
        TAINT_NAMES[bit] if bit < len(TAINT_NAMES) else f"bit {bit}"
        for bit in range(value.bit_length())
        if value >> bit & 1
    ]
    return f"{taint_letters(value)} ({', '.join(names)})"


def letters_mask(letters: str) -> int:
    """The bits of taint letters: "OE" -> O and E."""
    mask = 0
    for letter in letters:
        bit = TAINT_LETTERS.find(letter)
        if bit < 0:
            raise ValueError(f"unknown taint letter {letter!r}")
        mask |= 1 << bit
    return mask


def parse_tainted(text: str) -> int:
    """/proc/sys/kernel/tainted content -> int."""
    stripped = text.strip()
    if not stripped.isdigit():
        raise ValueError(f"not a taint value: {stripped[:40]!r}")
    return int(stripped)
