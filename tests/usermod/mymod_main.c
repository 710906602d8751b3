// SPDX-License-Identifier: GPL-2.0
/*
 * A module as a user writes it: it calls nr_processes(), which the kernel does not
 * export, and (in mymod_data.c) reads unexported data. No klp-harness header, no
 * printed addresses: the harness converts the references and checks the rest itself.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sched/stat.h>

#include "mymod.h"

static int __init mymod_init(void)
{
	pr_info("mymod: %d processes, command line of %zu characters, dmesg_restrict=%d\n",
		nr_processes(), mymod_cmdline_length(), mymod_dmesg_restrict());
	return 0;
}

static void __exit mymod_exit(void)
{
	pr_info("mymod: %d processes at unload\n", nr_processes());
}

module_init(mymod_init);
module_exit(mymod_exit);
MODULE_DESCRIPTION("An ordinary module using unexported kernel symbols");
MODULE_LICENSE("GPL");
