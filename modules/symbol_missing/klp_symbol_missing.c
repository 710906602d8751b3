// SPDX-License-Identifier: GPL-2.0
/*
 * An expected refusal: a function no kernel has, converted anyway (force = true in
 * expect.toml). The kernel's klp resolver refuses the load: "livepatch: symbol
 * 'klp_harness_no_such_function' not found in symbol table", and insmod fails before
 * this module's init runs. The kernel must stay healthy: the harness scans the step
 * for splats and new taint, and the next sample in the same boot must still pass.
 *
 * On a kernel without CONFIG_LIVEPATCH the relocation is never resolved: the module
 * loads with address 0, and refuses itself. The function is never called.
 */
#include <linux/module.h>

#include <klp_sample.h>

extern void klp_harness_no_such_function(void);

static int __init klp_symbol_missing_init(void)
{
	if (!klp_address(klp_harness_no_such_function)) {
		pr_err("klp_symbol_missing: klp_harness_no_such_function unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	/* The kernel should never have let this module load: say so, then report. */
	pr_err("klp_symbol_missing: klp_harness_no_such_function resolved although no kernel has it\n");
	klp_report(klp_harness_no_such_function, 0);
	return 0;
}

static void __exit klp_symbol_missing_exit(void)
{
	pr_info("klp_symbol_missing: unloaded\n");
}

module_init(klp_symbol_missing_init);
module_exit(klp_symbol_missing_exit);
MODULE_DESCRIPTION("klp-harness sample: a symbol vmlinux does not have, refused by the kernel");
MODULE_LICENSE("GPL");
