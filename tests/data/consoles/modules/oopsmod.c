#include <linux/module.h>
#include <linux/kernel.h>
static int __init oopsmod_init(void)
{
	volatile int *p = NULL;
	pr_info("klp-harness: resolved kernel_clone,0 0x%lx\n", 0x1234UL);
	WARN(1, "klp-harness test warning\n");
	return *p;
}
static void __exit oopsmod_exit(void) {}
module_init(oopsmod_init);
module_exit(oopsmod_exit);
MODULE_LICENSE("GPL");
