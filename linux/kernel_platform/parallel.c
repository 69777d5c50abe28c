// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * C side of kernel_platform/parallel.rs: run n jobs of one callback at once on an unbound
 * workqueue and wait for all of them (the core's platform::Parallel).
 *
 * The caller runs job 0 itself; jobs 1..n go to the module's "mlsdisk_par"
 * workqueue (WQ_UNBOUND: any CPU; WQ_MEM_RECLAIM: a rescuer thread, so the
 * jobs make progress under memory pressure, as the write path must). The
 * work items are allocated per call with GFP_NOIO; when that fails, or the
 * workqueue does not exist, every job runs on the caller's thread: the
 * result is the same, only slower. mlsdisk_par_run returns only after
 * every job returned, which is what lets the Rust side lend the jobs
 * borrowed data.
 *
 * Every job runs in a memalloc_noio scope: the caller holds the engine's
 * mutex, which writeback may be waiting for, so an allocation in a job
 * (the crypto API's per-request allocations included) must not recurse
 * into I/O through reclaim.
 *
 * The same init also makes "mlsdisk_sync" (WQ_MEM_RECLAIM | WQ_UNBOUND),
 * the queue of mlsdisk_run_on_worker (kernel_platform/platform.c): create, open, sync and
 * close of a disk run there on a fresh stack, with a rescuer thread, rather
 * than on system_dfl_long_wq, which has none.
 */
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "bindings/par_helpers.h"

struct mlsdisk_par_item {
	struct work_struct work;
	void (*fn)(void *ctx, unsigned int idx);
	void *ctx;
	unsigned int idx;
	atomic_t *left;
	struct completion *done;
};

static struct workqueue_struct *mlsdisk_par_wq;
static struct workqueue_struct *mlsdisk_sync_wq_ptr;

int mlsdisk_par_init(void)
{
	mlsdisk_par_wq = alloc_workqueue("mlsdisk_par", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!mlsdisk_par_wq)
		return -ENOMEM;
	mlsdisk_sync_wq_ptr = alloc_workqueue("mlsdisk_sync", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!mlsdisk_sync_wq_ptr) {
		destroy_workqueue(mlsdisk_par_wq);
		mlsdisk_par_wq = NULL;
		return -ENOMEM;
	}
	return 0;
}

void mlsdisk_par_exit(void)
{
	if (mlsdisk_sync_wq_ptr)
		destroy_workqueue(mlsdisk_sync_wq_ptr);
	mlsdisk_sync_wq_ptr = NULL;
	if (mlsdisk_par_wq)
		destroy_workqueue(mlsdisk_par_wq);
	mlsdisk_par_wq = NULL;
}

struct workqueue_struct *mlsdisk_sync_wq(void)
{
	return mlsdisk_sync_wq_ptr;
}

unsigned int mlsdisk_par_width(void)
{
	return mlsdisk_par_wq ? num_online_cpus() : 1;
}

static void mlsdisk_par_work_fn(struct work_struct *work)
{
	struct mlsdisk_par_item *item = container_of(work, struct mlsdisk_par_item, work);
	unsigned int noio = memalloc_noio_save();

	item->fn(item->ctx, item->idx);
	memalloc_noio_restore(noio);
	/* The last job to finish wakes the caller; nothing is touched after. */
	if (atomic_dec_and_test(item->left))
		complete(item->done);
}

void mlsdisk_par_run(void (*fn)(void *ctx, unsigned int idx), void *ctx, unsigned int n)
{
	DECLARE_COMPLETION_ONSTACK(done);
	struct mlsdisk_par_item *items = NULL;
	atomic_t left;
	unsigned int i;

	if (n > 1 && mlsdisk_par_wq)
		items = kmalloc_array(n - 1, sizeof(*items), GFP_NOIO);
	if (!items) {
		unsigned int noio = memalloc_noio_save();

		for (i = 0; i < n; i++)
			fn(ctx, i);
		memalloc_noio_restore(noio);
		return;
	}
	atomic_set(&left, n - 1);
	for (i = 1; i < n; i++) {
		struct mlsdisk_par_item *item = &items[i - 1];

		INIT_WORK(&item->work, mlsdisk_par_work_fn);
		item->fn = fn;
		item->ctx = ctx;
		item->idx = i;
		item->left = &left;
		item->done = &done;
		queue_work(mlsdisk_par_wq, &item->work);
	}
	{
		unsigned int noio = memalloc_noio_save();

		fn(ctx, 0);
		memalloc_noio_restore(noio);
	}
	wait_for_completion(&done);
	kfree(items);
}
