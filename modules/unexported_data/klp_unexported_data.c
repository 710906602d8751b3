// SPDX-License-Identifier: GPL-2.0
/*
 * Read and write unexported data of vmlinux through klp relocations:
 *  - saved_command_line (char *, not exported) is read and shown, live, in the
 *    read-only parameter `cmdline`, for the guest to compare with /proc/cmdline;
 *  - dmesg_restrict (int, the kernel.dmesg_restrict sysctl, not exported) is
 *    flipped at load, can be set through the parameter `dmesg_restrict` (the
 *    guest sees every change in /proc/sys/kernel/dmesg_restrict), and is put back
 *    to its value from before the load when the module is removed.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>

#include <klp_sample.h>

#define NAME "klp_unexported_data"

/* Set once init has checked both addresses: parameters never reach 0 before. */
static bool ready;
static int before = -1;	/* dmesg_restrict before the load */

static int cmdline_get(char *buf, const struct kernel_param *kp)
{
	if (!ready)
		return -ENODEV;
	return scnprintf(buf, PAGE_SIZE, "%s\n", READ_ONCE(saved_command_line));
}

static const struct kernel_param_ops cmdline_ops = {
	.get = cmdline_get,
};
module_param_cb(cmdline, &cmdline_ops, NULL, 0444);
MODULE_PARM_DESC(cmdline, "saved_command_line, read through a klp relocation");

module_param(before, int, 0444);
MODULE_PARM_DESC(before, "dmesg_restrict before this module changed it");

static int restrict_set(const char *val, const struct kernel_param *kp)
{
	int value, err;

	if (!ready)
		return -ENODEV;
	err = kstrtoint(val, 0, &value);
	if (err)
		return err;
	if (value != 0 && value != 1)	/* the sysctl's own range */
		return -EINVAL;
	WRITE_ONCE(dmesg_restrict, value);
	pr_info(NAME ": dmesg_restrict set to %d through the parameter\n", value);
	return 0;
}

static int restrict_get(char *buf, const struct kernel_param *kp)
{
	if (!ready)
		return -ENODEV;
	return scnprintf(buf, PAGE_SIZE, "%d\n", READ_ONCE(dmesg_restrict));
}

static const struct kernel_param_ops restrict_ops = {
	.set = restrict_set,
	.get = restrict_get,
};
module_param_cb(dmesg_restrict, &restrict_ops, NULL, 0644);
MODULE_PARM_DESC(dmesg_restrict, "the kernel's dmesg_restrict, written through a klp relocation");

static int __init klp_unexported_data_init(void)
{
	const char *cmdline;

	klp_report(saved_command_line, 0);
	klp_report(dmesg_restrict, 0);
	if (!klp_address(saved_command_line) || !klp_address(dmesg_restrict)) {
		pr_err(NAME ": saved_command_line or dmesg_restrict unresolved (address 0), refusing to use them\n");
		return -ENOENT;
	}

	cmdline = READ_ONCE(saved_command_line);
	if (!cmdline) {
		pr_err(NAME ": saved_command_line is NULL\n");
		return -EIO;
	}
	pr_info(NAME ": saved_command_line: %s\n", cmdline);

	before = READ_ONCE(dmesg_restrict);
	WRITE_ONCE(dmesg_restrict, !before);
	pr_info(NAME ": dmesg_restrict changed from %d to %d\n", before, READ_ONCE(dmesg_restrict));
	ready = true;
	return 0;
}

static void __exit klp_unexported_data_exit(void)
{
	int now = READ_ONCE(dmesg_restrict);

	WRITE_ONCE(dmesg_restrict, before);
	pr_info(NAME ": dmesg_restrict restored from %d to %d (before load: %d)\n",
		now, READ_ONCE(dmesg_restrict), before);
	klp_report(dmesg_restrict, 0);	/* the exit path's own relocation */
}

module_init(klp_unexported_data_init);
module_exit(klp_unexported_data_exit);
MODULE_DESCRIPTION("klp-harness sample: unexported data (saved_command_line, dmesg_restrict) through klp relocations");
MODULE_LICENSE("GPL");
