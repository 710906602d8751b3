// SPDX-License-Identifier: GPL-2.0
/* Reads of unexported kernel data: saved_command_line and dmesg_restrict. */
#include <linux/init.h>
#include <linux/printk.h>
#include <linux/string.h>

#include "mymod.h"

size_t mymod_cmdline_length(void)
{
	const char *cmdline = READ_ONCE(saved_command_line);

	return cmdline ? strlen(cmdline) : 0;
}

int mymod_dmesg_restrict(void)
{
	return READ_ONCE(dmesg_restrict);
}
