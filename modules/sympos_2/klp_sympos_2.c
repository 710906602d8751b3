// SPDX-License-Identifier: GPL-2.0
/*
 * Reach one of several vmlinux symbols with one name, chosen by the source file that
 * defines it rather than by a number: expect.toml asks for the init_once of
 * fs/proc/inode.c. init_once is a static slab constructor that many file systems and
 * caches define (4-5 copies in the source-built 6.1 and 7.3, 7 in Debian 5.10 and 6.1, 8 in
 * 6.12, 10 in 7.x), and the position of fs/proc/inode.c's among them differs (2nd on 6.1 and
 * 6.12, 3rd on 5.10 and 7.x). The harness resolves the file in each kernel's linked vmlinux and
 * passes the position it found as KLP_SYMPOS_init_once, so this one source fits them all.
 *
 * The module only takes the address: it never calls a static function it knows
 * nothing about. The harness checks that the address is the KLP_SYMPOS_init_once-th
 * init_once in the guest's /proc/kallsyms order. A copy kept in .data outlives init, so
 * the harness can also read the relocated field in the loaded module's memory.
 */
#include <linux/module.h>

#include <klp_sample.h>

#ifndef KLP_SYMPOS_init_once
#error "built by klp-harness, which defines KLP_SYMPOS_init_once (expect.toml [convert] sympos)"
#endif

/* Any prototype: only the address is used. */
extern void init_once(void *foo);

/* An R_X86_64_64 klp relocation in a section that is not freed after init. */
static void (*klp_sympos_2_kept)(void *foo) __used = init_once;

static int __init klp_sympos_2_init(void)
{
	klp_report(init_once, KLP_SYMPOS_init_once);
	if (!klp_address(init_once)) {
		pr_err("klp_sympos_2: init_once,%d unresolved (address 0), refusing to load\n",
		       KLP_SYMPOS_init_once);
		return -ENOENT;
	}
	pr_info("klp_sympos_2: init_once,%d (fs/proc/inode.c) is at %pS\n",
		KLP_SYMPOS_init_once, klp_address(init_once));
	return 0;
}

static void __exit klp_sympos_2_exit(void)
{
	pr_info("klp_sympos_2: unloaded; the .data copy of init_once,%d is %pS\n",
		KLP_SYMPOS_init_once, klp_sympos_2_kept);
}

module_init(klp_sympos_2_init);
module_exit(klp_sympos_2_exit);
MODULE_DESCRIPTION("klp-harness sample: the init_once of fs/proc/inode.c, chosen by source file");
MODULE_LICENSE("GPL");
