// SPDX-License-Identifier: GPL-2.0
/*
 * Reach the last of several vmlinux symbols with one name through a klp relocation,
 * chosen in the source by the file that defines it: the init_once of net/socket.c,
 * which every kernel of the matrix links after all the others (4th of 4 in the
 * source-built 6.1, 5th of 5 in the source-built 7.3, 7th on Debian 5.10 and 6.1, 8th
 * on 6.12, 10th on Debian 7.x). The KLP_SYMPOS_FILE annotation below
 * (harness/include/klp_convert.h) names the file; the converter finds its position in
 * each kernel's linked vmlinux and removes the array.
 *
 * The module is built without knowing that number, so it finds the position of the
 * address it got at run time: it counts the vmlinux symbols named init_once with
 * kallsyms_on_each_symbol() (not exported since v5.7, reached through a klp
 * relocation too), in kallsyms order, which is the order the kernel's sympos counts.
 * It prints the position it found with klp_report() and refuses to load unless that
 * position is the last; the harness then checks the address against the guest's
 * /proc/kallsyms independently.
 *
 * Only the address of init_once is taken: a static function is never called.
 */
#include <linux/kallsyms.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/version.h>

#include <klp_convert.h>
#include <klp_sample.h>

/* Any prototype: only the address is used. */
extern void init_once(void *foo);

KLP_MODULE_RELOC_FILE(vmlinux) klp_sympos_last_files[] = {
	KLP_SYMPOS_FILE(init_once, "net/socket.c"),
};

struct klp_sympos_count {
	unsigned long addr;	/* what the klp relocation gave us */
	int count;		/* init_once symbols seen so far */
	int pos;		/* the position of addr, 0 until seen */
};

static int klp_sympos_count_one(struct klp_sympos_count *c, const char *name,
				unsigned long addr)
{
	if (strcmp(name, "init_once"))
		return 0;
	c->count++;
	if (addr == c->addr && !c->pos)
		c->pos = c->count;
	return 0;
}

/* The callback lost its struct module * argument in v6.4. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
static int klp_sympos_count_cb(void *data, const char *name, unsigned long addr)
{
	return klp_sympos_count_one(data, name, addr);
}
#else
static int klp_sympos_count_cb(void *data, const char *name, struct module *mod,
			       unsigned long addr)
{
	/* Before v5.12 module symbols follow vmlinux's: they do not count, stop there. */
	if (mod)
		return 1;
	return klp_sympos_count_one(data, name, addr);
}
#endif

static int __init klp_sympos_last_init(void)
{
	struct klp_sympos_count c = { .addr = (unsigned long)klp_address(init_once) };

	if (!c.addr || !klp_address(kallsyms_on_each_symbol)) {
		pr_err("klp_sympos_last: init_once or kallsyms_on_each_symbol unresolved (address 0), refusing to load\n");
		return -ENOENT;
	}
	kallsyms_on_each_symbol(klp_sympos_count_cb, &c);
	if (!c.pos) {
		pr_err("klp_sympos_last: %px (%pS) is none of the %d vmlinux init_once symbols\n",
		       (void *)c.addr, (void *)c.addr, c.count);
		return -EINVAL;
	}
	klp_report(init_once, c.pos);
	if (c.pos != c.count) {
		pr_err("klp_sympos_last: got init_once,%d but vmlinux has %d of them: not the last\n",
		       c.pos, c.count);
		return -EINVAL;
	}
	pr_info("klp_sympos_last: init_once,%d (net/socket.c) is the last of %d, at %pS\n",
		c.pos, c.count, (void *)c.addr);
	return 0;
}

static void __exit klp_sympos_last_exit(void)
{
	pr_info("klp_sympos_last: unloaded\n");
}

module_init(klp_sympos_last_init);
module_exit(klp_sympos_last_exit);
MODULE_DESCRIPTION("klp-harness sample: the last init_once, chosen by its source file (KLP_SYMPOS_FILE)");
MODULE_LICENSE("GPL");
