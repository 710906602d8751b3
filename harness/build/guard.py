"""Targets without CONFIG_LIVEPATCH: refused unless the user insists.

Such a kernel skips every `.klp.rela` section at load (the stub klp_apply_section_relocs()
returns 0): a converted module's references to unexported symbols would stay 0. The guard
the converter adds (harness.klp.guard) makes the module refuse to load there; building for
such a kernel at all is only useful to prove that, so it takes an explicit option.
"""

from __future__ import annotations

from harness.errors import NoLivepatchError
from harness.kernels.kernel import Kernel

ALLOW_OPTION = "--allow-no-livepatch"


def require_livepatch(kernel: Kernel, allow: bool) -> None:
    """NoLivepatchError when `kernel` lacks CONFIG_LIVEPATCH and `allow` is not given."""
    if allow or kernel.config_value("LIVEPATCH") == "y":
        return
    raise NoLivepatchError(
        f"{kernel.name}: CONFIG_LIVEPATCH is not set, so the kernel would skip every klp "
        f"relocation and leave the module's references at 0; give {ALLOW_OPTION} to build "
        "anyway (the module then refuses to load there: Unknown symbol klp_enable_patch)"
    )
