/* SPDX-License-Identifier: GPL-2.0 */
#ifndef MYMOD_H
#define MYMOD_H

size_t mymod_cmdline_length(void);
int mymod_dmesg_restrict(void);

#endif
