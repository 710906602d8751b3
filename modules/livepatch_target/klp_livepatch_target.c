// SPDX-License-Identifier: GPL-2.0
/*
 * An ordinary module with a static (file-local) variable, klp_target_greeting.
 * Nothing exports it: the livepatch sample (modules/livepatch) reaches it through
 * a klp relocation against this module object, `.klp.sym.klp_livepatch_target.
 * klp_target_greeting,0`, which the kernel resolves in this module's kallsyms.
 */
#include <linux/kernel.h>
#include <linux/module.h>

static char klp_target_greeting[] = "greetings from klp_livepatch_target";

/* The variable's address as this module sees it, to compare with /proc/kallsyms. */
static char greeting_addr[20];
module_param_string(greeting_addr, greeting_addr, sizeof(greeting_addr), 0444);
MODULE_PARM_DESC(greeting_addr, "address of klp_target_greeting (read-only)");

static int __init klp_livepatch_target_init(void)
{
	snprintf(greeting_addr, sizeof(greeting_addr), "%px", klp_target_greeting);
	pr_info("klp_livepatch_target: loaded; klp_target_greeting at 0x%px: %s\n",
		klp_target_greeting, klp_target_greeting);
	return 0;
}

static void __exit klp_livepatch_target_exit(void)
{
	pr_info("klp_livepatch_target: unloaded\n");
}

module_init(klp_livepatch_target_init);
module_exit(klp_livepatch_target_exit);
MODULE_DESCRIPTION("klp-harness sample: an ordinary module whose static data a livepatch reads");
MODULE_LICENSE("GPL");
