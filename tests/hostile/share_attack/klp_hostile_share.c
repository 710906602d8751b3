// SPDX-License-Identifier: GPL-2.0
/*
 * Harmless itself: the attacks on the host are the guest commands in share_attacks.toml,
 * run as this module's checks (root in the guest can do what any module's code could).
 */
#include <linux/module.h>

static int __init klp_hostile_share_init(void)
{
	pr_info("klp_hostile_share: loaded\n");
	return 0;
}

static void __exit klp_hostile_share_exit(void)
{
	pr_info("klp_hostile_share: unloaded\n");
}
module_init(klp_hostile_share_init);
module_exit(klp_hostile_share_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-harness test: a harmless module whose checks attack the host");
