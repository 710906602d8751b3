"""modpost output parsing, on lines captured from real kbuild runs against Debian 6.1 and 7.3
headers."""

import pytest

from harness.build.modpost import restricted_by_module
from harness.build.modpost import undefined as modpost_undefined
from harness.errors import BuildError

REAL_LOG = """\
  CC [M]  /tmp/b1/klp_kernel_clone.o
  MODPOST /tmp/b1/Module.symvers
WARNING: modpost: "do_exit" [/tmp/b1/klp_kernel_clone.ko] undefined!
WARNING: modpost: "kernel_clone" [/tmp/b1/klp_kernel_clone.ko] undefined!
  CC [M]  /tmp/b1/klp_kernel_clone.mod.o
  LD [M]  /tmp/b1/klp_kernel_clone.ko
"""


def test_modpost_undefined_from_real_log() -> None:
    assert modpost_undefined(REAL_LOG) == ["do_exit", "kernel_clone"]


# kernel_clone built against linux-headers-7.3.4+deb13-amd64: modpost's format changed in 6.x
REAL_LOG_73 = """\
  MODPOST Module.symvers
WARNING: modpost: klp_kernel_clone.ko: symbol 'kernel_clone' undefined!
  CC [M]  klp_kernel_clone.mod.o
"""


def test_modpost_undefined_from_a_73_log() -> None:
    assert modpost_undefined(REAL_LOG_73) == ["kernel_clone"]


def test_an_unknown_undefined_format_is_an_error() -> None:
    with pytest.raises(BuildError, match="cannot read modpost"):
        modpost_undefined("WARNING: modpost: m.ko: 'x' is undefined!\n")


def test_modpost_error_form_counts_too() -> None:
    line = 'ERROR: modpost: "foo" [/x/m.ko] undefined!\n'
    assert modpost_undefined(line) == ["foo"]
    assert modpost_undefined("nothing here\n") == []


def test_sympos_defines_are_c_identifiers() -> None:
    from harness.build.modules import sympos_defines

    assert sympos_defines({"foo": 3, "bar.cold": 2}) == [
        "-DKLP_SYMPOS_foo=3",
        "-DKLP_SYMPOS_bar_cold=2",
    ]


def test_an_export_restricted_to_other_modules_from_a_73_log() -> None:
    """modules/restricted_export against linux-headers-7.3.4+deb13-amd64 (with
    CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS=y on make's command line: a warning)."""
    line = (
        "WARNING: modpost: klp_restricted_export.ko: module uses symbol 'kptr_restrict' "
        "from namespace 'module:printf_kunit', but does not import it.\n"
    )
    assert restricted_by_module(REAL_LOG_73 + line) == {
        "klp_restricted_export.ko": ["kptr_restrict"]
    }
    assert modpost_undefined(line) == []
    ordinary = line.replace("'module:printf_kunit'", "'DMA_BUF'")
    assert restricted_by_module(ordinary) == {}  # an ordinary namespace stays an export
