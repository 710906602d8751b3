"""examples/dkms with Debian's own dkms (3.0.x): add, build, install, then load what it made.

DKMS runs on private trees only (--dkmstree, --sourcetree, --installtree, --kernelsourcedir,
TMPDIR) and, in a private mount namespace, with every mount read-only except the test's
directory: a write anywhere else fails the test. Two global paths DKMS reads are replaced
inside that namespace only: /etc/dkms (its framework.conf: sign_file, mok_signing_key,
mok_certificate) and /lib/modules/<release>/modules.dep, from which dkms 3.0 decides the
compression (.ko.xz when the kernel's own modules are listed as .ko.xz).

No VM: the installed module is signed (and the signature verifies with openssl), compressed as
the kernel's config says (and as xz, zstd or gzip when modules.dep lists such modules),
converted (klp-harness inspect resolves every klp relocation); without STRIP[0]="no" DKMS's
strip corrupts it; a kernel without CONFIG_LIVEPATCH is skipped (exit 77). `vm`: the installed
module is loaded in the kernel's guest and judged like any module directory (passed on Debian
6.1, 6.12 and 7.3 with --kernel). `source_kernel`: on source:6.1:sig-force, DKMS signing with
the kernel build's key gives a module the kernel accepts, and DKMS's own key one it rejects.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.build.modules import builds_dir
from harness.build.prebuilt import prebuilt_module
from harness.build.sign import INFO_SIZE, MAGIC
from harness.cache import cache_root
from harness.cli.main import main
from harness.kernels.kernel import Kernel
from harness.klp.compressed import read_module
from harness.klp.elfread import MODULE_LIMIT
from harness.suite.results import PASS, ModuleResult
from harness.suite.samples import find_sample
from harness.suite.steps import StepGuest
from harness.suite.transcript import Transcript

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dkms"
PACKAGE, VERSION = "klpdemo", "1.0"
LOADED = "klpdemo: nr_processes() reached through a klp relocation:"
DKMS_KEY_CN = "DKMS module signing key"  # the subject of the key dkms generates

# Runs as root in a new mount namespace: $1 DKMS's work directory, $2 its install tree and $3
# the harness's cache (klp-harness make's build roots are there) are the only writable places;
# $4 the kernel release, $5 its modules.dep ("" for none), $6 DKMS's framework.conf; then
# `dkms add`, `build` and `install` of $7 (a source tree) with the remaining arguments.
PRIVATE_DKMS = r"""
set -eu
private=$1 install=$2 cache=$3 release=$4 moddep=$5 framework=$6 source=$7
shift 7
mounts=$(awk '{print $5}' /proc/self/mountinfo | grep -v -E '^/(proc|sys|dev)(/|$)')
mount --bind "$private" "$private"
mount --bind "$install" "$install"
mount --bind "$cache" "$cache"
mount -t tmpfs -o mode=0755 klp-dkms "$private/ns"
mkdir -p "$private/ns/upper/modules/$release" "$private/ns/work" "$private/ns/etc"
[ -z "$moddep" ] || cp "$moddep" "$private/ns/upper/modules/$release/modules.dep"
cp "$framework" "$private/ns/etc/framework.conf"
mount -t overlay klp-dkms \
    -o "lowerdir=/usr/lib,upperdir=$private/ns/upper,workdir=$private/ns/work" /usr/lib
mount --bind "$private/ns/etc" /etc/dkms
for m in $mounts; do mount -o remount,bind,ro "$m"; done
if touch /var/lib/klp-dkms-probe 2>/dev/null; then echo "/var/lib is writable" >&2; exit 99; fi
dkms add "$@" "$source"
dkms build "$@" -m klpdemo -v 1.0
dkms install --no-depmod "$@" -m klpdemo -v 1.0
"""


@dataclass(frozen=True)
class DkmsBuild:
    module: Path  # the installed file, under <work>/install/<release>/updates/dkms/
    output: str  # what dkms printed
    make_log: str  # DKMS's make.log of the build
    cert: Path  # the certificate the module was signed with (DER)


def need_dkms() -> str:
    found = shutil.which("dkms") or ("/usr/sbin/dkms" if Path("/usr/sbin/dkms").is_file() else "")
    if not found:  # never a silent skip
        pytest.fail("dkms not installed: apt-get install dkms (ci/setup.sh does)", pytrace=False)
    return found


def framework_conf(path: Path, sign_file: Path, key: Path, cert: Path) -> Path:
    path.write_text(f"sign_file={sign_file}\nmok_signing_key={key}\nmok_certificate={cert}\n")
    return path


def private_dkms(
    kernel: Kernel,
    work: Path,
    install: Path,
    key: Path | None,
    cert: Path | None,
    source: Path,
    moddep: Path,
) -> tuple[int, str, Path]:
    """`dkms add/build/install` of `source` for `kernel` in `work` (installing under
    `install`): (exit status, what dkms printed, the certificate DKMS signs with). DKMS
    generates its own key in work/keys unless `key` and `cert` are given."""
    dkms = need_dkms()
    for sub in ("ns", "tree", "src", "tmp", "keys"):
        (work / sub).mkdir(parents=True)
    (install / kernel.release).mkdir(parents=True)
    key = key or work / "keys" / "mok.key"
    cert = cert or work / "keys" / "mok.pub"
    conf = framework_conf(work / "framework.conf", kernel.headers / "scripts/sign-file", key, cert)
    dkms_args = [
        *("-k", f"{kernel.release}/x86_64", "--kernelsourcedir", str(kernel.headers)),
        *("--dkmstree", str(work / "tree"), "--sourcetree", str(work / "src")),
        *("--installtree", str(install)),
    ]
    userns = ["--map-root-user"] if os.geteuid() != 0 else []  # dkms add insists on root
    argv = ["unshare", "--mount", "--propagation", "private", *userns, "sh", "-c", PRIVATE_DKMS]
    argv += [
        "private-dkms",
        str(work),
        str(install),
        str(cache_root()),
        kernel.release,
        str(moddep) if moddep.is_file() else "",
    ]
    argv += [str(conf), str(source), *dkms_args]
    # klp-harness (MAKE[0]) from this interpreter's venv; dkms itself from /usr/sbin.
    path = f"{Path(sys.executable).parent}:{Path(dkms).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "TMPDIR": str(work / "tmp")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr, cert


def run_dkms(
    kernel: Kernel,
    work: Path,
    *,
    install: Path | None = None,
    key: Path | None = None,
    cert: Path | None = None,
    source: Path = EXAMPLE,
    moddep: Path | None = None,
) -> DkmsBuild:
    """`private_dkms` that must succeed: the installed module and the build's logs.
    `moddep` stands for the kernel's modules.dep (from which DKMS picks the compression)."""
    install = install or work / "install"
    moddep = moddep or kernel.modules_dir / "modules.dep"
    status, output, cert = private_dkms(kernel, work, install, key, cert, source, moddep)
    logs = list((work / "tree").glob(f"{PACKAGE}/{VERSION}/*/*/log/make.log"))
    make_log = logs[0].read_text() if logs else "(no make.log)"
    assert status == 0, f"dkms failed ({status}):\n{output}\n{make_log}"
    installed = sorted((install / kernel.release / "updates/dkms").glob(f"{PACKAGE}.ko*"))
    assert len(installed) == 1, output
    return DkmsBuild(installed[0], output, make_log, cert)


def expected_suffix(kernel: Kernel) -> str:
    """The compression the kernel's config chose for its own modules."""
    for option, suffix in (("XZ", ".xz"), ("ZSTD", ".zst"), ("GZIP", ".gz")):
        if kernel.config_value(f"MODULE_COMPRESS_{option}") == "y":
            return suffix
    return ""


def signature(data: bytes) -> tuple[bytes, bytes]:
    """(the signed body, the PKCS#7 signature) of a module ending in MAGIC."""
    assert data.endswith(MAGIC)
    info = data[-len(MAGIC) - INFO_SIZE : -len(MAGIC)]
    sig_len = struct.unpack(">I", info[-4:])[0]
    end = len(data) - len(MAGIC) - INFO_SIZE
    return data[: end - sig_len], data[end - sig_len : end]


def verify_signature(data: bytes, cert_der: Path, work: Path) -> subprocess.CompletedProcess[str]:
    body, sig = signature(data)
    (work / "body").write_bytes(body)
    (work / "sig.p7").write_bytes(sig)
    pem = work / "cert.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", cert_der, "-out", pem], check=True)
    cms = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-noverify"]
    files = ["-in", str(work / "sig.p7"), "-content", str(work / "body"), "-certfile", str(pem)]
    return subprocess.run([*cms, *files, "-out", os.devnull], capture_output=True, text=True)


def modinfo(module: Path, field: str) -> str:
    done = subprocess.run(["modinfo", "-F", field, module], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def judged(guest: StepGuest, kernel: Kernel, module: Path) -> tuple[ModuleResult, Transcript]:
    """`module` loaded, checked and unloaded in `guest` as a step of examples/dkms (the
    default expectation of any module directory), then judged."""
    from harness.suite.steps import GuestSteps

    sample = find_sample(str(EXAMPLE))
    step = prebuilt_module(kernel, sample, module)  # copied where the guest sees it
    return GuestSteps(guest, kernel).run(sample, sample.expectation(kernel), step)


# --- the recipe, without a kernel -----------------------------------------------------------


def test_the_recipe_converts_in_make_and_keeps_dkms_from_stripping() -> None:
    conf = (EXAMPLE / "dkms.conf").read_text()
    assert re.search(
        r'^MAKE\[0\]="klp-harness make --kernel-dir \$\{kernel_source_dir\}', conf, re.M
    )
    assert re.search(r'^STRIP\[0\]="no"$', conf, re.M)
    assert re.search(r'^BUILD_EXCLUSIVE_CONFIG="CONFIG_LIVEPATCH"$', conf, re.M)
    assert "POST_BUILD" not in conf.replace("# ", "")  # too late: after strip, sign, compress
    sample = find_sample(str(EXAMPLE))
    assert (sample.name, sample.module) == ("dkms", PACKAGE)


def test_dkms_skips_a_kernel_without_livepatch(tmp_path: Path) -> None:
    """BUILD_EXCLUSIVE_CONFIG: DKMS reads the kernel's .config and stops with 77 before make."""
    need_dkms()
    headers = tmp_path / "headers"
    headers.mkdir()
    (headers / "Makefile").write_text("$(error make must not run)\n")
    (headers / ".config").write_text("CONFIG_MODULES=y\n# CONFIG_LIVEPATCH is not set\n")
    release = "6.1.0-nolp"
    kernel = Kernel(
        "t", "t", release, "0", headers, headers, headers / ".config", headers, headers, headers
    )
    with pytest.raises(AssertionError, match=r"dkms failed \(77\)") as info:
        run_dkms(kernel, tmp_path / "work")
    assert "BUILD_EXCLUSIVE directive which does not match this kernel" in str(info.value)
    assert not list((tmp_path / "work" / "install").rglob("*.ko*"))


# --- DKMS on the cached kernel --------------------------------------------------------------


def test_dkms_installs_a_signed_compressed_converted_module(
    klp_kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = run_dkms(klp_kernel, tmp_path / "dkms")
    assert "Certificate or key are missing, generating self signed certificate" in built.output
    assert f"Signing module {tmp_path}/dkms/tree/{PACKAGE}/{VERSION}/build/klpdemo.ko" in (
        built.output
    )
    assert re.search(r"klpdemo\.ko: converted 1 symbols, 2 relocations", built.make_log)
    # Compressed as the kernel's own modules are (dkms 3.0 reads that from modules.dep).
    assert built.module.name == f"klpdemo.ko{expected_suffix(klp_kernel)}"
    data, _ = read_module(built.module, MODULE_LIMIT)
    assert data.endswith(MAGIC) and data.count(MAGIC) == 1  # DKMS's signature, only
    assert modinfo(built.module, "signer") == DKMS_KEY_CN
    want_hash = klp_kernel.config_value("MODULE_SIG_HASH")
    assert modinfo(built.module, "sig_hashalgo") == (want_hash if want_hash != "n" else "sha512")
    # Nothing touched the module after DKMS signed it: the signature holds for its bytes.
    checked = verify_signature(data, built.cert, tmp_path)
    assert checked.returncode == 0, checked.stderr
    # Its klp relocations survived DKMS and resolve in the kernel's table.
    capsys.readouterr()
    assert main(["inspect", str(built.module), "--kernel", klp_kernel.spec]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok +vmlinux:nr_processes,0: resolves to 0x[0-9a-f]+", out), out
    for kind, section in (("R_X86_64_64", ".rodata"), ("R_X86_64_PLT32", ".exit.text")):
        assert re.search(rf"nr_processes +0 {kind} +{re.escape(section)} ", out), out


def test_dkms_default_strip_corrupts_a_klp_relocation(
    klp_kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why STRIP[0]="no": without it DKMS runs `strip -g` on the converted module, and GNU
    strip (binutils 2.40, bookworm's) leaves .klp.rela.vmlinux..rodata pointing past the
    symbol table; the kernel's klp loader does not check that index."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source)
    conf = source / "dkms.conf"
    conf.write_text(conf.read_text().replace('STRIP[0]="no"\n', ""))
    built = run_dkms(klp_kernel, tmp_path / "dkms", source=source)
    capsys.readouterr()
    assert main(["inspect", str(built.module), "--kernel", klp_kernel.spec]) == 4
    err = capsys.readouterr().err
    assert "relocation section .klp.rela.vmlinux..rodata refers to a symbol past the table" in (
        err
    ), (subprocess.run(["strip", "--version"], capture_output=True, text=True).stdout, err)


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".gz"])
def test_dkms_compression_follows_the_kernels_modules(
    klp_kernel: Kernel, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """DKMS compresses after signing, in the format of the kernel's own modules (a modules.dep
    listing .ko<suffix> files); inspect reads each, and the signature holds for the content."""
    moddep = tmp_path / "modules.dep"
    moddep.write_text(f"kernel/fs/fuse/fuse.ko{suffix}:\n")
    built = run_dkms(klp_kernel, tmp_path / "dkms", moddep=moddep)
    assert built.module.name == f"klpdemo.ko{suffix}"
    data, kind = read_module(built.module, MODULE_LIMIT)
    assert kind == {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}[suffix]
    assert verify_signature(data, built.cert, tmp_path).returncode == 0
    capsys.readouterr()
    assert main(["inspect", str(built.module), "--kernel", klp_kernel.spec]) == 0


@pytest.mark.vm
def test_the_dkms_module_loads_and_passes_in_the_guest(klp_kernel: Kernel, tmp_path: Path) -> None:
    from harness.vm.boot import boot

    built = run_dkms(klp_kernel, tmp_path / "dkms", install=tmp_path / "install")
    with boot(klp_kernel, tmp_path / "console.log", modules=builds_dir(klp_kernel)) as guest:
        result, transcript = judged(guest, klp_kernel, built.module)
    transcript.save(tmp_path / "transcript.json")
    assert (result.outcome, result.reason) == (PASS, ""), tmp_path / "transcript.json"
    insmod = transcript.commands[0]
    assert insmod.cmd.endswith(f"/{built.module.name}") and insmod.status == 0
    assert any(LOADED in line for line in insmod.kernel), insmod.kernel
    assert transcript.memory is not None and not transcript.memory.error


@pytest.mark.source_kernel
@pytest.mark.vm
def test_sig_force_accepts_the_build_key_and_rejects_dkms_own(tmp_path: Path) -> None:
    """source:6.1:sig-force: DKMS configured with certs/signing_key.pem of the kernel's build
    gives a module the kernel loads and that passes; DKMS's generated key is rejected."""
    from harness.kernels.acquire import acquire
    from harness.vm.boot import boot

    kernel = acquire("source:6.1:sig-force")
    assert kernel.config_value("MODULE_SIG_FORCE") == "y"
    certs, install = kernel.headers / "certs", tmp_path / "install"
    build_key = {"key": certs / "signing_key.pem", "cert": certs / "signing_key.x509"}
    good = run_dkms(kernel, tmp_path / "good", install=install / "good", **build_key)
    bad = run_dkms(kernel, tmp_path / "bad", install=install / "bad")
    assert modinfo(bad.module, "signer") == DKMS_KEY_CN != modinfo(good.module, "signer")
    for made in (good, bad):  # DKMS signs once: klp-harness make --no-sign left it to DKMS
        assert made.module.read_bytes().count(MAGIC) == 1
    with boot(kernel, tmp_path / "console.log", modules=builds_dir(kernel)) as guest:
        result, transcript = judged(guest, kernel, good.module)
        rejected = prebuilt_module(kernel, find_sample(str(EXAMPLE)), bad.module).ko
        refused = guest.run(f"insmod {guest.path(rejected)}")
    transcript.save(tmp_path / "transcript.json")
    insmod = transcript.commands[0]
    assert insmod.status == 0 and any(LOADED in line for line in insmod.kernel), insmod
    assert not any("verification failed" in line for line in insmod.kernel)  # no E taint
    assert kernel.config_value("PROC_KCORE") == "y"  # base.config: the in-memory proof
    assert (result.outcome, result.reason) == (PASS, ""), tmp_path / "transcript.json"
    assert refused.status != 0 and "Key was rejected by service" in refused.output
