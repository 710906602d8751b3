"""The Printer: per-kernel prefixes, quiet, a bar on a terminal and few lines in a log."""

import io
import threading

from harness.console import Printer


def test_kernel_prefix_and_quiet() -> None:
    out = io.StringIO()
    root = Printer(out, tty=False)
    root.for_kernel("debian:bookworm").say("fetching")
    root.silent().say("hidden")
    root.silent().warn("shown")
    assert out.getvalue().splitlines() == [
        "klp-harness: [debian:bookworm] fetching",
        "klp-harness: warning: shown",
    ]


def test_guest_text_is_escaped() -> None:
    out = io.StringIO()
    Printer(out, tty=False).say("a\nklp-harness: forged\x1b[2J")
    assert len(out.getvalue().splitlines()) == 1
    assert "\x1b" not in out.getvalue()


def test_progress_in_a_log_is_a_few_lines() -> None:
    out = io.StringIO()
    printer = Printer(out, tty=False)
    for done in range(0, 1001):
        printer.progress("download", done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "klp-harness: download: 0%"
    assert lines[-1] == "klp-harness: download: 100%"
    assert len(lines) == 5


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    printer = Printer(out, tty=True)
    for done in range(0, 11):
        printer.progress("download", done, 10)
        if done == 5:
            printer.say("between")
    text = out.getvalue()
    assert text.count("\r") == 11
    assert "\nklp-harness: between\n" in text
    assert text.endswith("100%\n")


def test_two_kernels_keep_their_lines_whole() -> None:
    out = io.StringIO()
    root = Printer(out, tty=False)

    def talk(name: str) -> None:
        printer = root.for_kernel(name)
        for i in range(200):
            printer.say(f"line {i}")

    threads = [threading.Thread(target=talk, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 400
    assert all(ln.startswith(("klp-harness: [a] line ", "klp-harness: [b] line ")) for ln in lines)
