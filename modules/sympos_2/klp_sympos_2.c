// SPDX-License-Identifier: GPL-2.0
/*
 * Reach the 2nd of several vmlinux symbols with one name through a klp relocation
 * with sympos 2. init_once is a static slab constructor that many file systems and
 * caches define (7 copies in Debian 5.10 and 6.1, 8 in 6.12, 10 in 7.3); which file
 * each copy comes from does not matter here.
 *
 * The module only takes the address: it never calls a static function it knows
 * nothing about. The harness checks that the address is the 2nd init_once in
 * the guest's /proc/kallsyms order. A copy kept in .data outlives init, so the
 * harness can also read the relocated field in the loaded module's memory.
 */
#include <linux/module.h>

#include <klp_sample.h>

/* Any prototype: only the address is used. */
extern void init_once(void *foo);

/* An R_X86_64_64 klp relocation in a section that is not freed after init. */
static void (*klp_sympos_2_kept)(void *foo) __used = init_once;

static int __init klp_sympos_2_init(void)
{
	klp_report(init_once, 2);
	if (!klp_address(init_once)) {
		pr_err("klp_sympos_2: init_once,2 unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	pr_info("klp_sympos_2: init_once,2 is at %pS\n", klp_address(init_once));
	return 0;
}

static void __exit klp_sympos_2_exit(void)
{
	pr_info("klp_sympos_2: unloaded; the .data copy of init_once,2 is %pS\n",
		klp_sympos_2_kept);
}

module_init(klp_sympos_2_init);
module_exit(klp_sympos_2_exit);
MODULE_DESCRIPTION("klp-harness sample: the 2nd of several init_once symbols (sympos 2)");
MODULE_LICENSE("GPL");
