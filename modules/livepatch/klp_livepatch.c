// SPDX-License-Identifier: GPL-2.0
/*
 * A livepatch in the manner of the kernel's samples/livepatch/livepatch-sample.c:
 * it replaces cmdline_proc_show(), so `cat /proc/cmdline` shows the patched text.
 * The replacement reads two symbols nobody exports, each through a klp relocation:
 *
 *   saved_command_line   vmlinux data (not exported in 6.1): .klp.sym.vmlinux.saved_command_line,0,
 *                        applied by the module loader when this module loads;
 *   klp_target_greeting  a static variable of the ordinary module klp_livepatch_target
 *                        (modules/livepatch_target, loaded first):
 *                        .klp.sym.klp_livepatch_target.klp_target_greeting,0, applied by
 *                        livepatch when the patch is enabled (klp_enable_patch()).
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#if IS_ENABLED(CONFIG_LIVEPATCH)
#include <linux/livepatch.h>
#endif

#include <klp_sample.h>

#define TARGET "klp_livepatch_target"

/* Static in klp_livepatch_target: undefined here, converted to a klp relocation. */
extern char klp_target_greeting[];

/* What the klp relocation gave for klp_target_greeting, to compare with /proc/kallsyms. */
static char greeting_addr[20];
module_param_string(greeting_addr, greeting_addr, sizeof(greeting_addr), 0444);
MODULE_PARM_DESC(greeting_addr, "address of " TARGET "'s klp_target_greeting, as relocated");

/*
 * The only reference to the module object, and not __init: its klp relocation is in
 * .klp.rela.klp_livepatch_target..text, never in init memory that is freed after this
 * module's init (livepatch applies it again whenever the target module loads).
 */
static noinline void *greeting_address(void)
{
	return klp_address(klp_target_greeting);
}

static int __maybe_unused klp_livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	const char *greeting = greeting_address();

	seq_printf(m, "klp_livepatch: %s; saved_command_line has %zu characters\n",
		   greeting ? greeting : "(" TARGET " not loaded)", strlen(saved_command_line));
	return 0;
}

#if IS_ENABLED(CONFIG_LIVEPATCH)
static struct klp_func vmlinux_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klp_livepatch_cmdline_proc_show,
	},
	{}
};

/*
 * No function of the target is patched: the object is listed so that livepatch applies
 * this module's .klp.rela.klp_livepatch_target.* sections when it finds the target loaded.
 */
static struct klp_func target_funcs[] = { {} };

static struct klp_object objs[] = {
	{
		/* name NULL: vmlinux */
		.funcs = vmlinux_funcs,
	},
	{
		.name = TARGET,
		.funcs = target_funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};
#endif

static int __init klp_livepatch_init(void)
{
	int ret;

	klp_report(saved_command_line, 0);
	if (!klp_address(saved_command_line)) {
		pr_err("klp_livepatch: saved_command_line unresolved (address 0), not patching\n");
		return -ENOENT;
	}
#if IS_ENABLED(CONFIG_LIVEPATCH)
	ret = klp_enable_patch(&patch);
	if (ret)
		return ret;
#else
	/* The kernel refuses a module marked livepatch before its init can run. */
	ret = -EOPNOTSUPP;
	return ret;
#endif
	if (!greeting_address()) {
		/* Enabled only when the target is loaded: the field stays 0 until then. */
		pr_warn("klp_livepatch: " TARGET " is not loaded; klp_target_greeting unresolved\n");
		return 0;
	}
	snprintf(greeting_addr, sizeof(greeting_addr), "%px", greeting_address());
	pr_info("klp_livepatch: enabled; klp_target_greeting of " TARGET " at 0x%px: %s\n",
		greeting_address(), (char *)greeting_address());
	return 0;
}

static void __exit klp_livepatch_exit(void)
{
	pr_info("klp_livepatch: unloaded\n");
}

module_init(klp_livepatch_init);
module_exit(klp_livepatch_exit);
MODULE_DESCRIPTION("klp-harness sample: livepatch of cmdline_proc_show reading unexported data");
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
