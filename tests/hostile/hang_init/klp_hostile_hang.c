// SPDX-License-Identifier: GPL-2.0
/* Hostile on purpose: its init sleeps ten minutes, so insmod never returns in time. */
#include <linux/delay.h>
#include <linux/module.h>

static int __init klp_hostile_hang_init(void)
{
	pr_info("klp_hostile_hang: sleeping ten minutes in init\n");
	ssleep(600);
	return 0;
}

static void __exit klp_hostile_hang_exit(void)
{
}
module_init(klp_hostile_hang_init);
module_exit(klp_hostile_hang_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-harness test: a module whose init hangs");
