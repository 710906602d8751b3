// SPDX-License-Identifier: GPL-2.0
/*
 * Every AArch64 relocation type the arm64 module loader applies that can reach vmlinux from a
 * module (the +-1 MiB and +-32 KiB ones cannot), against unexported kernel_clone (text) and
 * saved_command_line (data), so the converter turns each into a klp relocation and the
 * in-memory check decodes what the loader wrote. The code is never run.
 */
#include <linux/module.h>

asm(".pushsection .text.klp_relocs, \"ax\"\n"
    ".globl klp_relocs_a64_code\n"
    "klp_relocs_a64_code:\n"
    "	movz x0, #:abs_g3:kernel_clone\n"		/* MOVW_UABS_G3 */
    "	movk x0, #:abs_g2_nc:kernel_clone\n"	/* MOVW_UABS_G2_NC */
    "	movk x0, #:abs_g1_nc:kernel_clone\n"	/* MOVW_UABS_G1_NC */
    "	movk x0, #:abs_g0_nc:kernel_clone\n"	/* MOVW_UABS_G0_NC */
    "	movn x1, #:abs_g2_s:saved_command_line\n"	/* MOVW_SABS_G2 */
    "	movk x1, #:abs_g1_nc:saved_command_line\n"
    "	movk x1, #:abs_g0_nc:saved_command_line\n"
    "	movz x2, #:prel_g1:kernel_clone\n"		/* MOVW_PREL_G1 */
    "	movk x2, #:prel_g0_nc:kernel_clone\n"	/* MOVW_PREL_G0_NC */
    "	adrp x3, saved_command_line\n"		/* ADR_PREL_PG_HI21 */
    "	ldrb w4, [x3, #:lo12:saved_command_line]\n"	/* LDST8_ABS_LO12_NC */
    "	ldrh w4, [x3, #:lo12:saved_command_line]\n"	/* LDST16_ABS_LO12_NC */
    "	ldr q0, [x3, #:lo12:saved_command_line]\n"	/* LDST128_ABS_LO12_NC */
    "	b kernel_clone\n"				/* JUMP26 */
    ".popsection\n"
    ".pushsection .data.klp_relocs, \"aw\"\n"
    ".balign 8\n"
    ".globl klp_relocs_a64_data\n"
    "klp_relocs_a64_data:\n"
    "	.quad kernel_clone - .\n"			/* PREL64 */
    "	.word saved_command_line - .\n"		/* PREL32 */
    "	.word 0\n"
    "	.quad kernel_clone + 16\n"			/* ABS64 with an addend */
    ".popsection\n");

extern char klp_relocs_a64_code[], klp_relocs_a64_data[];

static int __init klp_relocs_a64_init(void)
{
	pr_info("klp_relocs_a64: code at %px, data at %px\n", klp_relocs_a64_code,
		klp_relocs_a64_data);
	return 0;
}

static void __exit klp_relocs_a64_exit(void)
{
}

module_init(klp_relocs_a64_init);
module_exit(klp_relocs_a64_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-harness test: AArch64 relocation types in memory");
