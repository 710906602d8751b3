"""Boot stage without a VM: the vng command line, module staging, guest I/O and the shared dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from harness.errors import BootError, FileReadError
from harness.fileio import sweep_special_files
from harness.kernels.kernel import Kernel
from harness.vm import boot
from harness.vm.accel import Accel
from harness.vm.commands import GuestDied, GuestFileError, GuestTimeout
from harness.vm.consolelog import console_tail
from harness.vm.guest import OUTPUT_LIMIT, Guest
from harness.vm.guestroot import FUNCTIONS, guest_functions
from harness.vm.sharedir import SharedDir

DATA = Path(__file__).parent / "data" / "consoles"
RELEASE = "6.1.0-56-amd64"


def fake_kernel(vmlinuz: Path, modules_dir: Path) -> Kernel:
    none = Path("/nonexistent")
    return Kernel(
        spec="local:test", name="fake-6.1", release=RELEASE, package_version="local",
        vmlinuz=vmlinuz, modules_dir=modules_dir, config=none, headers=none, symvers=none,
        kallsyms=none,
    )  # fmt: skip


@pytest.mark.parametrize("which", list(Accel))
def test_vng_command(which: Accel) -> None:
    cmd = boot.vng_command(
        Path("/k/boot/vmlinuz-x"), Path("/r/console.files"), which, root=Path("/c/root"),
        modules=Path("/c/builds/k"),
    )  # fmt: skip
    assert cmd[1:3] == ["--run", "/k/boot/vmlinuz-x"]
    assert "--rw" not in cmd  # the root stays read-only
    assert cmd[cmd.index("--root") + 1] == "/c/root"  # never the host's root
    assert cmd[cmd.index("--rwdir") + 1] == "/klp/share=/r/console.files"
    assert cmd[cmd.index("--rodir") + 1] == "/klp/modules=/c/builds/k"
    assert "--qemu-opts=-no-reboot" in cmd
    appended = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--append"]
    assert "panic=-1" in appended and "printk.devkmsg=on" in appended
    assert ("--disable-kvm" in cmd) == (which == "tcg")


def test_debian_layout_boots_in_place(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    vmlinuz = tmp_path / "boot" / f"vmlinuz-{RELEASE}"
    vmlinuz.write_bytes(b"")
    mods = tmp_path / "lib" / "modules" / RELEASE
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    assert boot.bootable_image(fake_kernel(vmlinuz, mods)) == vmlinuz


def test_other_layout_is_staged_and_depmod_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    vmlinuz = tmp_path / "images" / "bzImage"
    vmlinuz.parent.mkdir()
    vmlinuz.write_bytes(b"")
    mods = tmp_path / "mods"
    (mods / "kernel").mkdir(parents=True)
    image = boot.bootable_image(fake_kernel(vmlinuz, mods))
    assert image == tmp_path / "cache" / "boot" / "fake-6.1" / "boot" / f"vmlinuz-{RELEASE}"
    assert image.resolve() == vmlinuz
    assert (image.parent.parent / "lib" / "modules" / RELEASE).resolve() == mods
    assert (mods / "modules.dep").exists()  # virtme-ng needs it to find 9p/virtio
    assert boot.bootable_image(fake_kernel(vmlinuz, mods)) == image  # idempotent


def test_share_dir_must_be_a_plain_path(tmp_path: Path) -> None:
    with pytest.raises(BootError, match="plain path"):
        boot.new_share_dir(tmp_path / "con sole.log", None)
    share = boot.new_share_dir(tmp_path / "console.log", None)
    assert share == tmp_path / "console.files" and share.is_dir()


def test_missing_image_is_a_boot_error(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path / "nope", tmp_path)
    with pytest.raises(BootError, match=r"fake-6.1: boot: no kernel image at"):
        boot.boot(kernel, tmp_path / "console.log", accel="tcg")
    with pytest.raises(BootError, match="unknown accelerator"):
        boot.boot(kernel, tmp_path / "console.log", accel="hvf")


def test_vng_is_found_beside_the_interpreter_without_path() -> None:
    """`vng` in the venv's bin/, which is not on PATH (a venv used without activating it)."""
    code = "from harness.vm.boot import find_vng; print(find_vng())"  # what vng_command runs
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    vng = os.path.join(os.path.dirname(sys.executable), "vng")
    assert out.stdout == f"{vng}\n"
    # and vng, which starts virtme-run through the shell, gets its own directory on PATH
    assert boot.vng_environment(vng)["PATH"].split(":")[0] == os.path.dirname(vng)


def test_console_tail_of_the_panic_log() -> None:
    # Asked for 3 lines, the tail still reaches back to the first splat (the Oops the insmod
    # caused, two lines before it) and runs to the panic at the end.
    tail = console_tail(DATA / "oops-then-panic.console.log", 3).splitlines()
    assert "insmod /tmp/klpboot-oops/oopsmod.ko" in tail[1]
    assert "BUG: kernel NULL pointer dereference" in tail[2]
    assert "Kernel panic - not syncing: sysrq triggered crash" in tail[-2]
    assert "\r" not in "".join(tail)
    assert console_tail(DATA / "missing.log") == "(no console log)"


def fake_guest(tmp_path: Path, argv: list[str]) -> Guest:
    """A Guest over a local process instead of a VM, for the session's failure paths."""
    log_path = tmp_path / "console.log"
    log = open(log_path, "wb")  # noqa: SIM115 - Guest closes it
    share = tmp_path / "share"
    share.mkdir()  # before the shell starts: it may `cd` there at once
    child = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=None)
    child.logfile_read = log
    return Guest(
        child, kernel_name="fake-6.1", accel=Accel.TCG, accel_reason="test", timeout_scale=1.0,
        console_log=log_path, log_handle=log, share_dir=share, command_line=argv,
    )  # fmt: skip


def test_status_file_is_the_fallback_for_a_garbled_marker(tmp_path: Path) -> None:
    # A shell that runs each command line up to its end marker and never prints the marker,
    # as when kernel messages garble it on the console: the status comes from the .rc file.
    share = tmp_path / "share"
    shell = f'cd {share} && while read -r line; do eval "${{line%%; printf*}}"; done'
    guest = fake_guest(tmp_path, ["sh", "-c", shell])
    try:
        result = guest.run("echo partial; exit 7", timeout=10)
        assert (result.status, result.output) == (7, "partial\n")
        (script,) = share.glob("cmd-0001-*.sh")  # numbered, with a part the guest cannot guess
        assert script.read_text() == "echo partial; exit 7\n"
    finally:
        guest.kill()


def test_no_answer_is_a_timeout_that_stops_the_guest(tmp_path: Path) -> None:
    guest = fake_guest(tmp_path, ["sleep", "60"])
    with pytest.raises(GuestTimeout, match=r"fake-6.1 \(tcg\): command: no answer to 'true'"):
        guest.run("true", timeout=1.5)
    assert not guest.alive
    guest.close()


def test_guest_exit_is_guest_died_naming_the_panic(tmp_path: Path) -> None:
    script = "echo '[    7.68] Kernel panic - not syncing: sysrq triggered crash'; sleep 1"
    guest = fake_guest(tmp_path, ["sh", "-c", script])
    with pytest.raises(GuestDied) as caught:
        guest.run("echo c > /proc/sysrq-trigger", timeout=30)
    first = str(caught.value).splitlines()[0]
    assert first == (
        "fake-6.1 (tcg): command: the guest ended (qemu exit status 0 after: "
        "Kernel panic - not syncing: sysrq triggered crash); "
        "no answer to 'echo c > /proc/sysrq-trigger'"
    )
    assert not guest.alive
    guest.close()


def test_boot_phase_failure_names_phase_and_tail(tmp_path: Path) -> None:
    guest = fake_guest(tmp_path, ["sh", "-c", "echo 'virtme-ng-init: mount failed'; exit 1"])
    with pytest.raises(GuestDied) as caught:
        guest.wait_ready(30)
    message = str(caught.value)
    assert message.startswith("fake-6.1 (tcg): boot: the guest ended (qemu exit status 1); ")
    assert message.endswith("virtme-ng-init: mount failed")
    guest.close()


def test_console_tail_keeps_a_long_panic_dump_whole(tmp_path: Path) -> None:
    """A panic dump longer than the usual tail still starts at what triggered it."""
    from harness.vm.consolelog import TAIL_LINES, console_tail

    lines = [f"[    1.0] boot line {i}" for i in range(100)]
    lines += ["[    7.1] sysrq: Trigger a crash", "[    7.1] Kernel panic - not syncing: sysrq"]
    lines += [f"[    7.2]  dump line {i}" for i in range(TAIL_LINES + 20)]
    log = tmp_path / "console.log"
    log.write_text("\n".join(lines) + "\n")
    tail = console_tail(log).splitlines()
    assert "sysrq: Trigger a crash" in tail[1] and tail[-1].endswith(f"dump line {TAIL_LINES + 19}")
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\n")
    assert len(console_tail(log).splitlines()) == TAIL_LINES  # no splat: the usual tail


@pytest.mark.parametrize("trap", ["symlink", "fifo", "directory", "huge"])
def test_guest_files_are_read_only_when_plain_and_bounded(tmp_path: Path, trap: str) -> None:
    # What a hostile guest can leave where the host reads: never followed, opened or slurped.
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    guest = fake_guest(tmp_path, ["sleep", "60"])
    name = guest.share_dir / "cmd-0001-x.out"
    if trap == "symlink":
        name.symlink_to(secret)
    elif trap == "fifo":
        os.mkfifo(name)
    elif trap == "directory":
        name.mkdir()
    else:
        with open(name, "wb") as handle:
            handle.truncate(OUTPUT_LIMIT + 1)
    want = {"symlink": "symbolic link", "fifo": "FIFO", "directory": "directory"}
    with pytest.raises(GuestFileError, match=want.get(trap, "more than the")):
        guest.read_file(name.name)
    assert not guest.alive  # a hostile guest is stopped
    guest.close()
    if trap in ("symlink", "fifo"):
        assert not os.path.lexists(name)  # swept at close: no trap left in the results
    assert secret.read_text() == "host secret\n"


def test_sweep_removes_links_and_special_files_only(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
    removed = {p.name for p, _ in sweep_special_files(tmp_path)}
    assert removed == {"link", "fifo", "dirlink"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "sub"]


def test_shared_dir_refuses_what_the_guest_may_plant(tmp_path: Path) -> None:
    top, secret = tmp_path / "share", tmp_path / "secret"
    top.mkdir()
    secret.write_text("key")
    share = SharedDir(top)
    stem = share.stem(1)
    assert re.fullmatch(r"cmd-0001-[0-9a-f]{8}", stem) and share.stem(1) == stem
    (top / "planted.sh").symlink_to(secret)
    with pytest.raises(FileReadError, match="cannot create"):
        share.create("planted.sh", b"cat /etc/shadow\n")  # never written through the link
    assert secret.read_text() == "key"
    share.create(f"{stem}.sh", b"true\n")
    assert (top / f"{stem}.sh").read_bytes() == b"true\n"
    os.mkfifo(top / "fifo")
    (top / "big").write_bytes(b"x" * 101)
    for name in ("planted.sh", "fifo", "big"):  # a link, a read that would block, too big
        with pytest.raises(FileReadError):
            share.read(name, 100)
    assert share.read_status("missing.rc") == ""  # not written yet
    (top / "done.rc").write_text("7\n")
    assert share.read_status("done.rc") == "7"
    with pytest.raises(FileReadError):
        share.read_status("fifo")
    assert sorted(p.name for p, _ in share.close()) == ["fifo", "planted.sh"]
    assert sorted(p.name for p in top.iterdir()) == sorted(["big", "done.rc", f"{stem}.sh"])


def logged_guest(tmp_path: Path, *, marker: bool = True) -> tuple[Guest, Path]:
    """A Guest over a host busybox shell that sourced the guest's shell functions, with
    /dev/kmsg, the taint file and dmesg played by files (`marker` False: the end marker
    never reaches the console, as when kernel messages garble it)."""
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "kmsg").write_text("boot noise before any canary\n")
    (kernel / "tainted").write_text("0\n")
    functions = guest_functions("TOKEN")
    functions = functions.replace("/dev/kmsg", f"{kernel}/kmsg")
    functions = functions.replace("/proc/sys/kernel/tainted", f"{kernel}/tainted")
    assert '>"' not in functions.replace('>"$1.', "")  # every other write appends
    if not marker:
        functions = functions.replace("printf '%s:%s:%s", ": '%s:%s:%s")
    # a function: busybox sh would run its own dmesg applet before a script on PATH
    functions += f"dmesg() {{ sed 's/^/[    1.000000] /' {kernel}/kmsg; }}\n"
    share = tmp_path / "share"
    # sourced at each line: the file is written once the Guest has picked its token
    shell = f'cd {share} && while read -r line; do . ./{FUNCTIONS}; eval "$line"; done'
    busybox = shutil.which("busybox") or "/bin/busybox"
    guest = fake_guest(tmp_path, [busybox, "sh", "-c", shell])
    (share / FUNCTIONS).write_text(functions.replace("TOKEN", guest._token))
    return guest, kernel


def test_logged_command_is_one_round_trip_with_only_its_kernel_lines(tmp_path: Path) -> None:
    # One console line per command; the guest's shell runs it with sh, without
    # arguments, and hands back its output, status, the kernel lines from its canary on
    # (filtered in the guest: the whole log is never copied) and the taint before and after.
    guest, kernel = logged_guest(tmp_path)
    try:
        cmd = (
            f'echo out; echo err >&2; echo "args=$#"; echo "klp: from cmd" >> {kernel}/kmsg; '
            f"echo 4096 > {kernel}/tainted; exit 3"
        )
        logged = guest.run_logged(cmd, "step one")
        assert (logged.result.status, logged.result.output) == (3, "out\nerr\nargs=0\n")
        assert (logged.lines, logged.taint_before, logged.taint_after) == (
            ["klp: from cmd"],
            0,
            4096,
        )
        # `exit` ended only the command; a syntax error is the command's status 2
        assert guest.run_logged("(", "broken").result.status == 2
        quiet = guest.run_logged("true", "quiet")
        assert (quiet.result.status, quiet.lines, quiet.taint_before) == (0, [], 4096)
        for path in guest.share_dir.iterdir():
            assert "boot noise" not in path.read_text(errors="replace"), path.name
    finally:
        guest.kill()


def test_logged_status_file_is_the_fallback_for_a_garbled_marker(tmp_path: Path) -> None:
    guest, kernel = logged_guest(tmp_path, marker=False)
    try:
        logged = guest.run_logged(f"echo 'klp: line' >> {kernel}/kmsg; exit 5", "lost", timeout=10)
        assert (logged.result.status, logged.lines) == (5, ["klp: line"])
    finally:
        guest.kill()


def test_logged_timeout_names_the_step(tmp_path: Path) -> None:
    guest, _ = logged_guest(tmp_path)
    with pytest.raises(GuestTimeout, match=r"command: no answer to 'hang insmod: sleep 30'"):
        guest.run_logged("sleep 30", "hang insmod", timeout=1)
    assert not guest.alive
    guest.close()
