#include <linux/module.h>
#include <linux/vmalloc.h>
static int __init goodmod_init(void)
{
	pr_info("klp-harness: resolved vfree,0 0x%px\n", (void *)vfree);
	return 0;
}
static void __exit goodmod_exit(void) {}
module_init(goodmod_init);
module_exit(goodmod_exit);
MODULE_LICENSE("GPL");
