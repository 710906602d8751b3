"""Signing converted modules with the kernel's own scripts/sign-file (from the default
kernel's headers, fetched through the harness) and a throwaway key made with openssl; the
signatures are read back with kmod's modinfo."""

from __future__ import annotations

import dataclasses
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest
from packaged_data import SIGNED_MODULE, TARGET_61, XZ_MODULE

from harness import errors
from harness.build.deliver import unsigned_warning
from harness.build.sign import (
    MAGIC,
    SignedModuleError,
    Signer,
    sign,
    sign_module,
    signer_for,
    unsigned,
)
from harness.cli.main import main
from harness.kernels.kernel import Kernel

SUBJECT = "klp-harness test key"

pytestmark = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("modinfo")), reason="needs openssl and modinfo"
)


@dataclasses.dataclass(frozen=True)
class Keys:
    key: Path
    cert: Path  # PEM
    der: Path  # the same certificate, DER (what a kernel build's signing_key.x509 is)
    serial: str  # as modinfo shows sig_key: "57:D2:..."


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tmp = tmp_path_factory.mktemp("keys")
    key, cert, der = tmp / "key.pem", tmp / "cert.pem", tmp / "cert.x509"
    request = ["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "2", "-batch"]
    request += ["-x509", "-subj", f"/CN={SUBJECT}", "-newkey", "rsa:2048"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(der)], check=True
    )
    serial = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-serial"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    hexs = serial.removeprefix("serial=")
    return Keys(key, cert, der, ":".join(hexs[i : i + 2] for i in range(0, len(hexs), 2)))


@pytest.fixture(scope="module")
def sign_file(klp_kernel: Kernel) -> Path:
    tool = klp_kernel.headers / "scripts/sign-file"
    assert tool.is_file(), f"{klp_kernel.name}: no scripts/sign-file in its headers"
    return tool


def modinfo(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in ("signer", "sig_key", "sig_hashalgo", "sig_id"):
        proc = subprocess.run(["modinfo", "-F", name, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        fields[name] = proc.stdout.strip()
    return fields


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("cert_form", ["pem", "der"])
def test_signed_input_stripped_converted_and_signed_again(
    keys: Keys,
    sign_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cert_form: str,
) -> None:
    cert = keys.cert if cert_form == "pem" else keys.der
    reference = tmp_path / "unsigned.ko"
    convert = ["convert", str(SIGNED_MODULE), *TARGET_61, "--strip-signature"]
    assert run([*convert, "-o", str(reference)], capsys)[0] == 0
    out = tmp_path / "tcp_vegas.ko"
    signing = ["--sign-key", str(keys.key), "--sign-cert", str(cert), "--sign-file", str(sign_file)]
    status, text, err = run([*convert, *signing, "-o", str(out)], capsys)
    assert status == 0, err
    assert text.strip().endswith(f"signature stripped, signed (sha256, {cert})")
    assert modinfo(out) == {
        "signer": SUBJECT,
        "sig_key": keys.serial,
        "sig_hashalgo": "sha256",
        "sig_id": "PKCS#7",
    }
    # the signature is appended to exactly the converted module
    assert unsigned(out.read_bytes(), "out") == reference.read_bytes()
    assert b".klp.rela.vmlinux." in reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tcp_vegas.ko", "unsigned.ko"]


def test_ko_xz_signed_then_compressed_with_the_kernels_sign_file(
    keys: Keys, klp_kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sign-file found in --kernel's headers; the output is signed, then xz-compressed (as
    kbuild and DKMS do), and modinfo reads the signature through the compression."""
    out = tmp_path / "xsk_diag.ko.xz"
    args = ["convert", str(XZ_MODULE), "--kernel", klp_kernel.spec, "--strip-signature"]
    args += ["--sign-key", str(keys.key), "--sign-cert", str(keys.cert), "-o", str(out)]
    status, text, err = run(args, capsys)
    assert status == 0, err
    assert text.strip().endswith(f"signed (sha256, {keys.cert}), xz-compressed")
    assert modinfo(out)["signer"] == SUBJECT
    assert lzma.decompress(out.read_bytes()).endswith(MAGIC)
    assert subprocess.run(["xz", "-t", str(out)]).returncode == 0


def test_a_failed_signing_leaves_nothing(
    keys: Keys, sign_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = Path(shutil.copy(SIGNED_MODULE, tmp_path / "m.ko"))
    signing = ["--sign-key", str(keys.cert), "--sign-cert", str(keys.cert)]  # not a key
    args = ["convert", str(src), *TARGET_61, "--strip-signature", *signing]
    args += ["--sign-file", str(sign_file)]
    for where in (["-o", str(tmp_path / "out.ko.xz")], ["-i"]):
        status, _, err = run([*args, *where], capsys)
        assert status == errors.BuildError.exit_code
        assert err.count("\n") == 1 and "sign-file failed: sign-file: " in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ko"]
        assert src.read_bytes() == SIGNED_MODULE.read_bytes()


def test_signer_for_options(keys: Keys, klp_kernel: Kernel, sign_file: Path) -> None:
    # a distribution kernel: it checks signatures, but its key stays with the distribution
    assert klp_kernel.config_value("MODULE_SIG") == "y"
    assert signer_for(klp_kernel, None, None, None) is None
    assert unsigned_warning(klp_kernel) is None  # not CONFIG_MODULE_SIG_FORCE
    assert signer_for(klp_kernel, keys.key, keys.cert) == Signer(sign_file, keys.key, keys.cert)
    assert signer_for(None, keys.key, keys.cert, sign_file, "sha512") == Signer(
        sign_file, keys.key, keys.cert, "sha512"
    )
    with pytest.raises(errors.UsageError, match="give both --sign-key and --sign-cert"):
        signer_for(klp_kernel, keys.key, None)
    with pytest.raises(errors.UsageError, match="give --sign-file PATH or --kernel"):
        signer_for(None, keys.key, keys.cert)
    with pytest.raises(errors.FileReadError, match=r"missing\.pem: certificate not found"):
        signer_for(klp_kernel, keys.key, keys.key.parent / "missing.pem")


def test_sign_refuses_a_signed_module(keys: Keys, sign_file: Path, tmp_path: Path) -> None:
    ko = Path(shutil.copy(SIGNED_MODULE, tmp_path / "m.ko"))
    with pytest.raises(SignedModuleError, match="already signed"):
        sign(Signer(sign_file, keys.key, keys.cert), ko)
    assert ko.read_bytes() == SIGNED_MODULE.read_bytes()


def test_sign_module_uses_a_built_trees_own_key(
    keys: Keys, klp_kernel: Kernel, sign_file: Path, tmp_path: Path
) -> None:
    """sign_module (the harness's own builds) and signer_for's default: a kernel built with
    CONFIG_MODULE_SIG whose certs/signing_key.pem and .x509 are at hand (a source build's
    tree, here made from the throwaway key) signs with them, unasked."""
    tree = tmp_path / "obj"
    (tree / "certs").mkdir(parents=True)
    (tree / "scripts").mkdir()
    (tree / "scripts/sign-file").symlink_to(sign_file)
    shutil.copy(keys.key, tree / "certs/signing_key.pem")
    shutil.copy(keys.der, tree / "certs/signing_key.x509")
    config = tmp_path / "config"
    config.write_text(
        'CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\nCONFIG_MODULE_SIG_HASH="sha384"\n'
        'CONFIG_MODULE_SIG_KEY="certs/signing_key.pem"\n'
    )
    built = dataclasses.replace(klp_kernel, headers=tree, config=config, _config={})
    signer = signer_for(built, None, None, None)
    assert signer == Signer(
        tree / "scripts/sign-file",
        tree / "certs/signing_key.pem",
        tree / "certs/signing_key.x509",
        "sha384",
    )
    ko = tmp_path / "m.ko"
    ko.write_bytes(unsigned(SIGNED_MODULE.read_bytes(), "m"))
    assert sign_module(built, ko)
    assert modinfo(ko)["signer"] == SUBJECT and modinfo(ko)["sig_hashalgo"] == "sha384"
    assert not sign_module(built, ko)  # signed already: left as it is
