// SPDX-License-Identifier: GPL-2.0
/*
 * Reach an export restricted to other modules through a klp relocation.
 *
 * From 7.x, kptr_restrict (the kernel.kptr_restrict sysctl) is exported with
 * EXPORT_SYMBOL_FOR_MODULES(kptr_restrict, "printf_kunit"): Module.symvers lists
 * it in the namespace "module:printf_kunit", and the loader refuses it to every
 * other module ("module uses symbol ... from namespace module:printf_kunit, but
 * does not import it"; such a namespace cannot be imported). For this module it
 * is as good as unexported, so klp-harness converts the reference to a klp
 * relocation. The value is shown, live, in the read-only parameter
 * `kptr_restrict`, for the guest to compare with /proc/sys/kernel/kptr_restrict.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>

#include <klp_sample.h>

#define NAME "klp_restricted_export"

static bool ready;	/* set once init has checked the address */

static int restrict_get(char *buf, const struct kernel_param *kp)
{
	if (!ready)
		return -ENODEV;
	return scnprintf(buf, PAGE_SIZE, "%d\n", READ_ONCE(kptr_restrict));
}

static const struct kernel_param_ops restrict_ops = {
	.get = restrict_get,
};
module_param_cb(kptr_restrict, &restrict_ops, NULL, 0444);
MODULE_PARM_DESC(kptr_restrict, "the kernel's kptr_restrict, read through a klp relocation");

static int __init klp_restricted_export_init(void)
{
	klp_report(kptr_restrict, 0);
	if (!klp_address(kptr_restrict)) {
		pr_err(NAME ": kptr_restrict unresolved (address 0), refusing to use it\n");
		return -ENOENT;
	}
	pr_info(NAME ": kptr_restrict is %d\n", READ_ONCE(kptr_restrict));
	ready = true;
	return 0;
}

static void __exit klp_restricted_export_exit(void)
{
	pr_info(NAME ": unloaded; kptr_restrict is %d\n", READ_ONCE(kptr_restrict));
}

module_init(klp_restricted_export_init);
module_exit(klp_restricted_export_exit);
MODULE_DESCRIPTION("klp-harness sample: an export restricted to another module (kptr_restrict) through a klp relocation");
MODULE_LICENSE("GPL");
