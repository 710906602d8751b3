// SPDX-License-Identifier: GPL-2.0
/*
 * The smallest module worth shipping through DKMS with klp-harness: it calls
 * nr_processes(), which the kernel does not export, directly (a relocation in .exit.text)
 * and through a pointer the compiler places in .rodata (a relocation in a data section, the
 * kind GNU strip mangles: see README.md). `klp-harness make` (MAKE[0] in dkms.conf) turns
 * both into klp relocations that the module loader resolves.
 */
#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sched/stat.h>

static int (*count_processes)(void) = nr_processes;

static int __init klpdemo_init(void)
{
	pr_info("klpdemo: nr_processes() reached through a klp relocation: %d processes\n",
		READ_ONCE(count_processes)());
	return 0;
}

static void __exit klpdemo_exit(void)
{
	pr_info("klpdemo: unloaded with %d processes\n", nr_processes());
}

module_init(klpdemo_init);
module_exit(klpdemo_exit);
MODULE_DESCRIPTION("Calls an unexported kernel function; built by DKMS with klp-harness make");
MODULE_VERSION("1.0");
MODULE_LICENSE("GPL");
