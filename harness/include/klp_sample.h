/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers for klp-harness sample modules: report what a klp relocation resolved to,
 * in the one line format the harness checks against the guest's /proc/kallsyms:
 *
 *   klp-harness: resolved <name>,<sympos> 0x<address>
 */
#ifndef KLP_SAMPLE_H
#define KLP_SAMPLE_H

#include <linux/compiler.h>
#include <linux/printk.h>

/*
 * The address a relocation left for `sym`. The compiler assumes a declared
 * function or object never sits at address 0 and would fold a NULL test away;
 * on a kernel without CONFIG_LIVEPATCH the field really stays 0.
 */
#define klp_address(sym)                                                      \
	({                                                                    \
		void *__klp_p = (void *)&(sym);                               \
		OPTIMIZER_HIDE_VAR(__klp_p);                                  \
		__klp_p;                                                      \
	})

#define klp_report(sym, pos)                                                  \
	pr_info("klp-harness: resolved %s,%d 0x%px\n", #sym, (int)(pos),     \
		klp_address(sym))

#endif /* KLP_SAMPLE_H */
