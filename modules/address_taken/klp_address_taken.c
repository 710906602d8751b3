// SPDX-License-Identifier: GPL-2.0
/*
 * Addresses of unexported functions and data taken everywhere a module can take
 * them, each one becoming a klp relocation the module loader resolves:
 *  - initialised tables in .data and .rodata (64-bit absolute, R_X86_64_64);
 *  - code in .init.text (init) and .exit.text (exit, checked at rmmod);
 *  - a parameter's set callback in the module's core text (not freed after init;
 *    gcc-12 puts it in .text.unlikely), run from the guest shell long after the
 *    load, which calls an unexported function: relocations applied at load hold.
 * Every table entry is compared with the address the code's own relocation gave,
 * and reported in klp_report()'s format for the harness to compare with kallsyms.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kernel_stat.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/sched/stat.h>

#include <klp_sample.h>

#define NAME "klp_address_taken"

struct entry {
	const char *name;
	const void *addr;
};

/* Written by nothing: the tables' addresses escape (table()) so they stay in memory. */
static struct entry data_table[] = {
	{ "nr_running", nr_running },			/* function, in .data */
	{ "saved_command_line", &saved_command_line },	/* data, in .data */
};

static const struct entry rodata_table[] = {
	{ "nr_iowait", nr_iowait },			/* function, in .rodata */
	{ "dmesg_restrict", &dmesg_restrict },		/* data, in .rodata */
};

/* The table's address hidden from the compiler: its entries are read from memory. */
static const struct entry *table(const struct entry *t)
{
	OPTIMIZER_HIDE_VAR(t);
	return t;
}

/* What the code's own relocation (not the table's) says each name is. */
static const void *direct(const char *name)
{
	if (!strcmp(name, "nr_running"))
		return klp_address(nr_running);
	if (!strcmp(name, "saved_command_line"))
		return klp_address(saved_command_line);
	if (!strcmp(name, "nr_iowait"))
		return klp_address(nr_iowait);
	if (!strcmp(name, "dmesg_restrict"))
		return klp_address(dmesg_restrict);
	return NULL;
}

/* Report every table entry; all must be non-zero and agree with the code. */
static int check_tables(const char *when)
{
	const struct entry *tables[] = { table(data_table), table(rodata_table) };
	static const char *const sections[] = { ".data", ".rodata" };
	int t, i;

	for (t = 0; t < ARRAY_SIZE(tables); t++) {
		for (i = 0; i < ARRAY_SIZE(data_table); i++) {
			const struct entry *e = &tables[t][i];
			const void *addr = READ_ONCE(e->addr);

			pr_info("klp-harness: resolved %s,0 0x%px\n", e->name, addr);
			if (!addr) {
				pr_err(NAME ": %s: %s entry %s unresolved (address 0), refusing to use it\n",
				       when, sections[t], e->name);
				return -ENOENT;
			}
			if (addr != direct(e->name)) {
				pr_err(NAME ": %s: %s entry %s is 0x%px, the code's relocation gave 0x%px\n",
				       when, sections[t], e->name, addr, direct(e->name));
				return -EIO;
			}
		}
		pr_info(NAME ": %s: %s table agrees with the code\n", when, sections[t]);
	}
	return 0;
}

static int probes;

/* Runs when the guest writes the parameter, after the load. */
static int probe_set(const char *val, const struct kernel_param *kp)
{
	int err;

	klp_report(nr_processes, 0);
	if (!klp_address(nr_processes)) {
		pr_err(NAME ": probe: nr_processes unresolved (address 0), refusing to call it\n");
		return -ENOENT;
	}
	err = check_tables("probe");
	if (err)
		return err;
	probes++;
	pr_info(NAME ": probe %d: nr_processes() = %d\n", probes, nr_processes());
	return 0;
}

static const struct kernel_param_ops probe_ops = {
	.set = probe_set,
	.get = param_get_int,
};
module_param_cb(probe, &probe_ops, &probes, 0644);
MODULE_PARM_DESC(probe, "write anything: call nr_processes() and check the tables again");

static int __init klp_address_taken_init(void)
{
	int err;

	klp_report(nr_context_switches, 0);
	if (!klp_address(nr_context_switches)) {
		pr_err(NAME ": nr_context_switches unresolved (address 0), refusing to call it\n");
		return -ENOENT;
	}
	err = check_tables("init");
	if (err)
		return err;
	pr_info(NAME ": init: nr_context_switches() = %llu, nr_running() = %u\n",
		nr_context_switches(), nr_running());
	return 0;
}

static void __exit klp_address_taken_exit(void)
{
	/* The exit path's own relocations: reported, then used. */
	klp_report(nr_context_switches, 0);
	klp_report(nr_iowait, 0);
	if (!klp_address(nr_context_switches) || !klp_address(nr_iowait)) {
		pr_err(NAME ": exit: unresolved function (address 0)\n");
		return;
	}
	pr_info(NAME ": exit: nr_context_switches() = %llu, nr_iowait() = %u, after %d probe(s)\n",
		nr_context_switches(), nr_iowait(), probes);
}

module_init(klp_address_taken_init);
module_exit(klp_address_taken_exit);
MODULE_DESCRIPTION("klp-harness sample: addresses of unexported symbols in .data, .rodata, .init.text, .exit.text and a parameter callback");
MODULE_LICENSE("GPL");
