// SPDX-License-Identifier: GPL-2.0
/*
 * Test module for the in-memory check of klp relocations (tests/test_memcheck_vm.py):
 * references to the 2nd init_once (a static function with several copies in vmlinux)
 * that stay in memory after init, so that a tampered sympos shows in the module's
 * relocated fields: a pointer in .data (R_X86_64_64) and code that takes the address
 * in .text. The function is never called.
 */
#include <linux/module.h>

extern void init_once(void *foo);

void *klp_memcheck_ref = init_once;

static noinline void *klp_memcheck_where(void)
{
	return init_once;
}

static int __init klp_memcheck_ref_init(void)
{
	pr_info("klp_memcheck_ref: %pS %pS\n", klp_memcheck_ref, klp_memcheck_where());
	return 0;
}

static void __exit klp_memcheck_ref_exit(void)
{
	pr_info("klp_memcheck_ref: unloaded\n");
}

module_init(klp_memcheck_ref_init);
module_exit(klp_memcheck_ref_exit);
MODULE_DESCRIPTION("klp-harness test: persistent references to init_once,2");
MODULE_LICENSE("GPL");
