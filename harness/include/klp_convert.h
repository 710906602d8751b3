/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * klp_convert.h - choose the kallsyms position of an ambiguous symbol in the source.
 *
 * Compatible with the klp-convert patch series (include/linux/livepatch.h):
 *
 *	extern int active_show(void);
 *	KLP_MODULE_RELOC(vmlinux) my_relocs[] = {
 *		KLP_SYMPOS(active_show, 2),	// the 2nd active_show in kallsyms order
 *	};
 *
 * `klp-harness convert` reads the `.klp.module_relocs.<obj>` section (packed
 * {pointer, u32 sympos} entries), uses the positions and removes the section.
 * A position of 0 means "must be unique", as in the kernel.
 *
 * A position differs from kernel to kernel; the source file that defines a local symbol
 * does not. Choose by file instead (a klp-harness extension, resolved per target kernel
 * from its linked vmlinux, like `--sympos init_once@fs/inode.c`):
 *
 *	extern void init_once(void *foo);
 *	KLP_MODULE_RELOC_FILE(vmlinux) my_files[] = {
 *		KLP_SYMPOS_FILE(init_once, "fs/inode.c"),	// the init_once of fs/inode.c
 *	};
 *
 * Those entries are packed {pointer, pointer to the file name} in
 * `.klp.module_reloc_files.<obj>`, consumed and removed like the section above.
 */
#ifndef KLP_HARNESS_KLP_CONVERT_H
#define KLP_HARNESS_KLP_CONVERT_H

#ifndef KLP_MODULE_RELOC

struct klp_module_reloc {
	union {
		void *sym;
		unsigned long long sym64;	/* same size everywhere */
	};
	unsigned int sympos;
} __attribute__((packed));

#define KLP_MODULE_RELOC(obj)						\
	struct klp_module_reloc						\
	__attribute__((__section__(".klp.module_relocs." #obj), __used__, aligned(4)))

#define KLP_SYMPOS(symbol, pos)						\
	{								\
		.sym = (void *)&(symbol),				\
		.sympos = (pos),					\
	}

#endif /* KLP_MODULE_RELOC */

#ifndef KLP_MODULE_RELOC_FILE

struct klp_module_reloc_file {
	union {
		void *sym;
		unsigned long long sym64;	/* same size everywhere */
	};
	union {
		const char *file;
		unsigned long long file64;
	};
} __attribute__((packed));

#define KLP_MODULE_RELOC_FILE(obj)					\
	struct klp_module_reloc_file					\
	__attribute__((__section__(".klp.module_reloc_files." #obj), __used__, aligned(8)))

#define KLP_SYMPOS_FILE(symbol, path)					\
	{								\
		.sym = (void *)&(symbol),				\
		.file = (path),						\
	}

#endif /* KLP_MODULE_RELOC_FILE */
#endif /* KLP_HARNESS_KLP_CONVERT_H */
