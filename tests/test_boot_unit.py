"""Boot stage without a VM: the vng command line, module staging, the KVM probe cache."""

from __future__ import annotations

from pathlib import Path

import pexpect
import pytest

from harness import accel, boot
from harness.errors import BootError
from harness.guest import Guest, GuestDied, GuestTimeout, console_tail
from harness.kernel import Kernel

DATA = Path(__file__).parent / "data" / "consoles"
RELEASE = "6.1.0-56-amd64"


def fake_kernel(vmlinuz: Path, modules_dir: Path) -> Kernel:
    none = Path("/nonexistent")
    return Kernel(
        spec="local:test", name="fake-6.1", release=RELEASE, package_version="local",
        vmlinuz=vmlinuz, modules_dir=modules_dir, config=none, headers=none, symvers=none,
        kallsyms=none,
    )  # fmt: skip


@pytest.mark.parametrize("which", ["kvm", "tcg"])
def test_vng_command(which: str) -> None:
    cmd = boot.vng_command(Path("/k/boot/vmlinuz-x"), Path("/r/console.files"), which)
    assert cmd[1:3] == ["--run", "/k/boot/vmlinuz-x"]
    assert "--rw" not in cmd  # the host root stays read-only
    assert cmd[cmd.index("--rwdir") + 1] == "/r/console.files"
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
        boot._share_dir(tmp_path / "con sole.log", None)
    share = boot._share_dir(tmp_path / "console.log", None)
    assert share == tmp_path / "console.files" and share.is_dir()


def test_missing_image_is_a_boot_error(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path / "nope", tmp_path)
    with pytest.raises(BootError, match=r"fake-6.1: boot: no kernel image at"):
        boot.boot(kernel, tmp_path / "console.log", accel="tcg")
    with pytest.raises(BootError, match="unknown accelerator"):
        boot.boot(kernel, tmp_path / "console.log", accel="hvf")


def test_accel_probe_runs_once_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def probe(vmlinuz: Path, timeout: float, which: str = "kvm") -> tuple[bool, str]:
        calls.append(vmlinuz)
        return False, "a KVM guest did not finish a 12 s probe boot (hangs)"

    monkeypatch.setattr(accel, "_probe_kvm", probe)
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    accel.reset_cache()
    try:
        first = accel.choose_accel(Path("/a"))
        assert (first.accel, first.reason) == ("tcg", probe(Path("/x"), 0)[1])
        assert accel.choose_accel(Path("/b")) is first
        assert calls[0] == Path("/a") and len(calls) == 2  # one probe + our direct call
        accel.reset_cache()
        monkeypatch.setenv(accel.ENV_VAR, "kvm")
        assert accel.choose_accel(Path("/c")).accel == "kvm"
        assert len(calls) == 2
    finally:
        accel.reset_cache()


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
    child = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=None)
    child.logfile_read = log
    share = tmp_path / "share"
    share.mkdir()
    return Guest(
        child, kernel_name="fake-6.1", accel="tcg", accel_reason="test", timeout_scale=1.0,
        console_log=log_path, log_handle=log, share_dir=share, command_line=argv,
    )  # fmt: skip


def test_status_file_is_the_fallback_for_a_garbled_marker(tmp_path: Path) -> None:
    guest = fake_guest(tmp_path, ["sleep", "60"])
    try:
        (guest.share_dir / "cmd-0001.out").write_text("partial\n")
        (guest.share_dir / "cmd-0001.rc").write_text("7\n")
        result = guest.run("insmod x.ko", timeout=10)
        assert (result.status, result.output) == (7, "partial\n")
        assert (guest.share_dir / "cmd-0001.sh").read_text() == "insmod x.ko\n"
    finally:
        guest._child.close(force=True)


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
    from harness.guest import TAIL_LINES, console_tail

    lines = [f"[    1.0] boot line {i}" for i in range(100)]
    lines += ["[    7.1] sysrq: Trigger a crash", "[    7.1] Kernel panic - not syncing: sysrq"]
    lines += [f"[    7.2]  dump line {i}" for i in range(TAIL_LINES + 20)]
    log = tmp_path / "console.log"
    log.write_text("\n".join(lines) + "\n")
    tail = console_tail(log).splitlines()
    assert "sysrq: Trigger a crash" in tail[1] and tail[-1].endswith(f"dump line {TAIL_LINES + 19}")
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\n")
    assert len(console_tail(log).splitlines()) == TAIL_LINES  # no splat: the usual tail
