// SPDX-License-Identifier: GPL-2.0
/*
 * An expected refusal: init_once (a static function with 7-10 copies in vmlinux)
 * converted with sympos 0, "must be unique". The kernel's klp resolver refuses the
 * load: "livepatch: unresolvable ambiguity for symbol 'init_once' in object '(null)'",
 * and insmod fails before this module's init runs.
 *
 * On a kernel without CONFIG_LIVEPATCH the relocation is never resolved: the module
 * loads with address 0, and refuses itself.
 */
#include <linux/module.h>

#include <klp_sample.h>

/* Any prototype: only the address is used. */
extern void init_once(void *foo);

static int __init klp_sympos_ambiguous_init(void)
{
	if (!klp_address(init_once)) {
		pr_err("klp_sympos_ambiguous: init_once,0 unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	/* The kernel should never have let this module load: say so, then report. */
	pr_err("klp_sympos_ambiguous: init_once,0 resolved although vmlinux has several\n");
	klp_report(init_once, 0);
	return 0;
}

static void __exit klp_sympos_ambiguous_exit(void)
{
	pr_info("klp_sympos_ambiguous: unloaded\n");
}

module_init(klp_sympos_ambiguous_init);
module_exit(klp_sympos_ambiguous_exit);
MODULE_DESCRIPTION("klp-harness sample: an ambiguous name with sympos 0, refused by the kernel");
MODULE_LICENSE("GPL");
