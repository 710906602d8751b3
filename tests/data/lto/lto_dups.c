// SPDX-License-Identifier: GPL-2.0
/* tests/data/lto: references to names that have several candidates on the LTO kernel
 * (c_start: one plain and one promoted; m_start: two plain, one promoted). Never loaded. */
#include <linux/module.h>

extern int c_start(void);
extern int m_start(void);

static void *lto_dups_kept[] __used = { c_start, m_start };

static int __init lto_dups_init(void)
{
	pr_info("lto_dups: %px %px\n", lto_dups_kept[0], lto_dups_kept[1]);
	return 0;
}

module_init(lto_dups_init);
MODULE_LICENSE("GPL");
