// SPDX-License-Identifier: GPL-2.0
/*
 * Reach a static function that clang LTO promoted: show_cpuinfo (arch/x86/kernel/cpu/proc.c,
 * the .show of /proc/cpuinfo's seq_operations) is `show_cpuinfo.llvm.<hash>` in the
 * kallsyms of a ThinLTO kernel. The kernel's lookup is exact, so the converter maps this
 * module's `show_cpuinfo` onto that full name (.klp.sym.vmlinux.show_cpuinfo.llvm.<hash>,0).
 *
 * The module only takes the address; it never calls the function. A copy kept in .data
 * outlives init, so the harness can also read the relocated field in the module's memory.
 */
#include <linux/module.h>

#include <klp_sample.h>

/* Any prototype: only the address is used. */
extern int show_cpuinfo(void *m, void *v);

/* An R_X86_64_64 klp relocation in a section that is not freed after init. */
static int (*klp_lto_promoted_kept)(void *m, void *v) __used = show_cpuinfo;

static int __init klp_lto_promoted_init(void)
{
	if (!klp_address(show_cpuinfo)) {
		pr_err("klp_lto_promoted: show_cpuinfo unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	/* %pS names the symbol as kallsyms holds it: the promoted, suffixed name. */
	pr_info("klp_lto_promoted: show_cpuinfo is at %pS\n", klp_address(show_cpuinfo));
	return 0;
}

static void __exit klp_lto_promoted_exit(void)
{
	pr_info("klp_lto_promoted: unloaded; the .data copy of show_cpuinfo is %pS\n",
		klp_lto_promoted_kept);
}

module_init(klp_lto_promoted_init);
module_exit(klp_lto_promoted_exit);
MODULE_DESCRIPTION("klp-harness sample: a static function promoted by clang LTO (.llvm.<hash>)");
MODULE_LICENSE("GPL");
