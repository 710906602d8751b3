"""Guests: choose the accelerator, boot a Kernel with virtme-ng on a minimal root, run commands,
read dmesg. Gives a Guest."""
