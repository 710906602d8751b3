// SPDX-License-Identifier: GPL-2.0
/* Hostile on purpose: panics the kernel as soon as it is loaded. */
#include <linux/kernel.h>
#include <linux/module.h>

static int __init klp_hostile_panic_init(void)
{
	panic("klp_hostile_panic: panic in init, on purpose");
	return 0;
}
module_init(klp_hostile_panic_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-harness test: a module that panics in its init");
