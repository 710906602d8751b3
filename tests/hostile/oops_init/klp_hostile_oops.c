// SPDX-License-Identifier: GPL-2.0
/* Hostile on purpose: writes through a NULL pointer in its init (an oops, not a panic). */
#include <linux/module.h>

static int *volatile klp_hostile_target; /* volatile: the compiler cannot drop the write */

static int __init klp_hostile_oops_init(void)
{
	*klp_hostile_target = 1;
	return 0;
}
module_init(klp_hostile_oops_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-harness test: a module that oopses in its init");
