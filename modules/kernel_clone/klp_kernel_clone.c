// SPDX-License-Identifier: GPL-2.0
/*
 * Start a kernel-mode task with kernel_clone() (not exported) and end it with
 * do_exit() (not exported since v5.17). Both calls reach vmlinux through klp
 * relocations that the kernel's module loader resolves.
 */
#include <linux/completion.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/version.h>

#include <klp_sample.h>

static DECLARE_COMPLETION(spawn_done);
static pid_t child_pid;
static int child_ran;

static noinline __used int child_fn(void *arg)
{
	WRITE_ONCE(child_ran, 1);
	pr_info("klp_kernel_clone: child pid %d running in kernel-thread mode\n",
		task_pid_nr(current));
	/* Returning would enter the user-mode exit path and oops: end as kthreads end. */
	do_exit(0);
}

#ifdef CONFIG_PPC64
/*
 * ppc64le: copy_thread() starts args->fn at ppc_function_entry(fn), the LOCAL entry when fn
 * begins with addis r2,r12/addi r2,r2 (what the loader's R_PPC64_ENTRY makes of a module
 * prologue), so fn would run with the kernel's r2. This thunk does not begin that way: it is
 * entered at its start with r12 = itself, and enters child_fn at its global entry.
 */
int klp_child_thunk(void *arg);
asm(".pushsection .text\n"
    ".globl klp_child_thunk\n.type klp_child_thunk,@function\n.p2align 2\n"
    "klp_child_thunk:\n"
    "\tnop\n"
    "\taddis 12,12,(child_fn-klp_child_thunk)@ha\n"
    "\taddi 12,12,(child_fn-klp_child_thunk)@l\n"
    "\tmtctr 12\n\tbctr\n"
    ".size klp_child_thunk,.-klp_child_thunk\n.popsection\n");
#define CHILD_FN klp_child_thunk
#else
#define CHILD_FN child_fn
#endif

/*
 * Clone from a kthread: the child then has no user mm, and before v5.19
 * (no kernel_clone_args.kthread) only a PF_KTHREAD parent yields a kernel thread.
 */
static int spawner_fn(void *unused)
{
	struct kernel_clone_args args = {
		/* CLONE_VFORK: kernel_clone() returns only once the child is in do_exit(). */
		.flags = CLONE_VM | CLONE_UNTRACED | CLONE_VFORK,
		/* The spawner ignores SIGCHLD, as every kthread does: the child is reaped. */
		.exit_signal = SIGCHLD,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 19, 0)
		.fn = CHILD_FN,
		.fn_arg = NULL,
		.kthread = 1,
#else
		.stack = (unsigned long)child_fn,
		.stack_size = 0,
#endif
	};

	child_pid = kernel_clone(&args);
	complete(&spawn_done);
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

static int __init klp_kernel_clone_init(void)
{
	struct task_struct *spawner;

	klp_report(kernel_clone, 0);
	klp_report(do_exit, 0);
	if (!klp_address(kernel_clone) || !klp_address(do_exit)) {
		pr_err("klp_kernel_clone: kernel_clone or do_exit unresolved (address 0), refusing to call it\n");
		return -ENOENT;
	}

	spawner = kthread_run(spawner_fn, NULL, "klp_clone_spawn");
	if (IS_ERR(spawner))
		return PTR_ERR(spawner);
	wait_for_completion(&spawn_done);
	/* Returns after spawner_fn has returned: no task runs module code any more. */
	kthread_stop(spawner);

	if (child_pid < 0) {
		pr_err("klp_kernel_clone: kernel_clone failed: %d\n", child_pid);
		return child_pid;
	}
	if (!READ_ONCE(child_ran)) {
		pr_err("klp_kernel_clone: child %d never ran\n", child_pid);
		return -EIO;
	}
	pr_info("klp_kernel_clone: child pid %d started by kernel_clone has exited\n", child_pid);
	return 0;
}

static void __exit klp_kernel_clone_exit(void)
{
	pr_info("klp_kernel_clone: unloaded\n");
}

module_init(klp_kernel_clone_init);
module_exit(klp_kernel_clone_exit);
MODULE_DESCRIPTION("klp-harness sample: kernel_clone() and do_exit() through klp relocations");
MODULE_LICENSE("GPL");
