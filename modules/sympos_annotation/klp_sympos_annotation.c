// SPDX-License-Identifier: GPL-2.0
/*
 * Choose the position of a duplicated name in the source, with the shipped header's
 * annotation (harness/include/klp_convert.h, as in the klp-convert series): the 2nd
 * init_once in kallsyms order. Built by kbuild against the kernel's headers; on a
 * CONFIG_DEBUG_INFO kernel (every Debian one) the module is compiled with -g and its
 * debug info refers to the annotation array, which the converter consumes.
 */
#include <linux/module.h>

#include <klp_convert.h>
#include <klp_sample.h>

/* Any prototype: only the address is used. */
extern void init_once(void *foo);

KLP_MODULE_RELOC(vmlinux) klp_sympos_annotation_relocs[] = {
	KLP_SYMPOS(init_once, 2),
};

/* A copy in .data outlives init, so the harness can read the relocated field later. */
static void (*klp_sympos_annotation_kept)(void *foo) __used = init_once;

static int __init klp_sympos_annotation_init(void)
{
	klp_report(init_once, 2);
	if (!klp_address(init_once)) {
		pr_err("klp_sympos_annotation: init_once,2 unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	pr_info("klp_sympos_annotation: init_once,2 is at %pS\n", klp_address(init_once));
	return 0;
}

static void __exit klp_sympos_annotation_exit(void)
{
	pr_info("klp_sympos_annotation: unloaded; the .data copy is %pS\n",
		klp_sympos_annotation_kept);
}

module_init(klp_sympos_annotation_init);
module_exit(klp_sympos_annotation_exit);
MODULE_DESCRIPTION("klp-harness sample: sympos chosen by a KLP_SYMPOS annotation");
MODULE_LICENSE("GPL");
