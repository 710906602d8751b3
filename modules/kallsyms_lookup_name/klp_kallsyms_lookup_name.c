// SPDX-License-Identifier: GPL-2.0
/*
 * Call kallsyms_lookup_name() (not exported since v5.7) through a klp relocation
 * and look up functions and data of vmlinux with it. Every result is printed in
 * klp_report()'s line format, so the harness compares each with /proc/kallsyms.
 */
#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/module.h>

#include <klp_sample.h>

/* Names unique in vmlinux from v5.8 to 7.x; data is in kallsyms only with KALLSYMS_ALL. */
static const char *const function_names[] = { "vfs_read", "do_exit", "kallsyms_on_each_symbol" };
static const char *const data_names[] = { "saved_command_line", "init_task", "jiffies_64" };

static int lookup(const char *name)
{
	unsigned long addr = kallsyms_lookup_name(name);

	if (!addr) {
		pr_err("klp_kallsyms_lookup_name: kallsyms_lookup_name(\"%s\") found nothing\n", name);
		return -ENOENT;
	}
	pr_info("klp-harness: resolved %s,0 0x%px\n", name, (void *)addr);
	return 0;
}

static int __init klp_kallsyms_lookup_name_init(void)
{
	unsigned long self;
	int i, err;

	klp_report(kallsyms_lookup_name, 0);
	if (!klp_address(kallsyms_lookup_name)) {
		pr_err("klp_kallsyms_lookup_name: kallsyms_lookup_name unresolved (address 0), refusing to call it\n");
		return -ENOENT;
	}

	/* The function finds itself at the address the relocation gave. */
	self = kallsyms_lookup_name("kallsyms_lookup_name");
	if (self != (unsigned long)klp_address(kallsyms_lookup_name)) {
		pr_err("klp_kallsyms_lookup_name: it finds itself at 0x%lx, the relocation gave 0x%px\n",
		       self, klp_address(kallsyms_lookup_name));
		return -EIO;
	}
	pr_info("klp_kallsyms_lookup_name: kallsyms_lookup_name(\"kallsyms_lookup_name\") matches the relocation\n");

	for (i = 0; i < ARRAY_SIZE(function_names); i++) {
		err = lookup(function_names[i]);
		if (err)
			return err;
	}
	if (IS_ENABLED(CONFIG_KALLSYMS_ALL)) {
		for (i = 0; i < ARRAY_SIZE(data_names); i++) {
			err = lookup(data_names[i]);
			if (err)
				return err;
		}
	} else {
		pr_info("klp_kallsyms_lookup_name: CONFIG_KALLSYMS_ALL=n, no data symbols to look up\n");
	}

	/* A name that is not there gives 0, not a stale or random address. */
	if (kallsyms_lookup_name("klp_harness_no_such_symbol")) {
		pr_err("klp_kallsyms_lookup_name: a missing name resolved\n");
		return -EIO;
	}
	pr_info("klp_kallsyms_lookup_name: looked up %zu functions and %zu data symbols\n",
		ARRAY_SIZE(function_names),
		IS_ENABLED(CONFIG_KALLSYMS_ALL) ? ARRAY_SIZE(data_names) : (size_t)0);
	return 0;
}

static void __exit klp_kallsyms_lookup_name_exit(void)
{
	pr_info("klp_kallsyms_lookup_name: unloaded\n");
}

module_init(klp_kallsyms_lookup_name_init);
module_exit(klp_kallsyms_lookup_name_exit);
MODULE_DESCRIPTION("klp-harness sample: kallsyms_lookup_name() through a klp relocation");
MODULE_LICENSE("GPL");
