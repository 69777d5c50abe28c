// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * C side of our device-mapper abstraction (dm/binding/): the bio queues of
 * a worker target (the ordered bio list, and a parallel work item per bio
 * in its per-bio data), ending bios, status codes, and
 * the dm_target/queue_limits accessors Rust cannot reach. Declarations and
 * contracts: bindings/mlsdisk_helpers.h.
 */
#define pr_fmt(fmt) "mlsdisk: " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/ratelimit.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "bindings/mlsdisk_helpers.h"

/* ---- Deferred bios -------------------------------------------------- */

/*
 * Two queues per target. The ordered one: a bio list that the target's
 * ordered queue in Rust (kernel_platform/work.rs) pops in order (writes,
 * flushes, discards). The parallel one: each bio is its own work item, in
 * the bio's per-bio data (ti->per_io_data_size, as dm-crypt does), on an
 * unbound workqueue that runs several at once (reads).
 */
struct mlsdisk_bioq {
	spinlock_t lock;
	struct bio_list bios;
	struct workqueue_struct *pwq;
	mlsdisk_bioq_parallel_fn parallel;
	void *ctx;
};

/* The per-bio data of a worker target: a parallel bio's work item. */
struct mlsdisk_pio {
	struct work_struct work;
	struct mlsdisk_bioq *q;
};

static void mlsdisk_pio_work(struct work_struct *work)
{
	struct mlsdisk_pio *pio = container_of(work, struct mlsdisk_pio, work);
	struct mlsdisk_bioq *q = pio->q;
	struct bio *bio = dm_bio_from_per_bio_data(pio, sizeof(*pio));

	/* Ends the bio, which may free it with `pio` (the clone's front pad):
	 * neither is touched afterwards. The workqueue allows a work item to
	 * be freed by its own function. */
	q->parallel(q->ctx, bio);
}

struct mlsdisk_bioq *mlsdisk_bioq_new(const char *name,
				      mlsdisk_bioq_parallel_fn parallel, void *ctx)
{
	struct mlsdisk_bioq *q = kzalloc(sizeof(*q), GFP_KERNEL);
	int active;

	if (!q)
		return NULL;
	spin_lock_init(&q->lock);
	bio_list_init(&q->bios);
	q->parallel = parallel;
	q->ctx = ctx;
	/* Parallel bios wait for the backing device most of their time: let
	 * several per CPU be in flight, so that the device sees a queue and
	 * the decryption runs on every CPU. Reclaim may be waiting for them. */
	active = clamp_t(int, 4 * num_possible_cpus(), 16, WQ_MAX_ACTIVE);
	q->pwq = alloc_workqueue("%s_rd", WQ_MEM_RECLAIM | WQ_UNBOUND, active, name);
	if (!q->pwq) {
		kfree(q);
		return NULL;
	}
	return q;
}

void mlsdisk_ti_set_per_bio_data(struct dm_target *ti)
{
	ti->per_io_data_size = sizeof(struct mlsdisk_pio);
}

void mlsdisk_bioq_push(struct mlsdisk_bioq *q, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&q->lock, flags);
	bio_list_add(&q->bios, bio);
	spin_unlock_irqrestore(&q->lock, flags);
}

struct bio *mlsdisk_bioq_pop(struct mlsdisk_bioq *q)
{
	unsigned long flags;
	struct bio *bio;

	spin_lock_irqsave(&q->lock, flags);
	bio = bio_list_pop(&q->bios);
	spin_unlock_irqrestore(&q->lock, flags);
	return bio;
}

void mlsdisk_bioq_push_parallel(struct mlsdisk_bioq *q, struct bio *bio)
{
	struct mlsdisk_pio *pio = dm_per_bio_data(bio, sizeof(*pio));

	pio->q = q;
	INIT_WORK(&pio->work, mlsdisk_pio_work);
	queue_work(q->pwq, &pio->work);
}

void mlsdisk_bioq_flush_parallel(struct mlsdisk_bioq *q)
{
	flush_workqueue(q->pwq);
}

void mlsdisk_bioq_free(struct mlsdisk_bioq *q)
{
	if (!q)
		return;
	destroy_workqueue(q->pwq);
	WARN_ON(!bio_list_empty(&q->bios));
	kfree(q);
}

void mlsdisk_bio_end(struct bio *bio, blk_status_t status)
{
	bio->bi_status = status;
	bio_endio(bio);
}

blk_status_t mlsdisk_blk_sts_ioerr(void)
{
	return BLK_STS_IOERR;
}

blk_status_t mlsdisk_blk_sts_nospc(void)
{
	return BLK_STS_NOSPC;
}

blk_status_t mlsdisk_blk_sts_resource(void)
{
	return BLK_STS_RESOURCE;
}

blk_status_t mlsdisk_blk_sts_notsupp(void)
{
	return BLK_STS_NOTSUPP;
}

size_t mlsdisk_bio_copy(struct bio *bio, u8 *buf, size_t len, bool to_bio)
{
	struct bvec_iter iter;
	struct bio_vec bv;
	size_t done = 0;

	bio_for_each_segment(bv, bio, iter) {
		if (bv.bv_len > len - done)
			break;
		if (to_bio)
			memcpy_to_bvec(&bv, buf + done);
		else
			memcpy_from_bvec(buf + done, &bv);
		done += bv.bv_len;
	}
	return done;
}

int mlsdisk_ti_setup_worker(struct dm_target *ti, sector_t max_io_len)
{
	ti->flush_supported = true;
	ti->discards_supported = true;
	return dm_set_target_max_io_len(ti, max_io_len);
}

bool mlsdisk_ti_writable(struct dm_target *ti)
{
	return !!(dm_table_get_mode(ti->table) & BLK_OPEN_WRITE);
}

void mlsdisk_limits_4k(struct queue_limits *limits, unsigned int max_discard_sectors)
{
	limits->logical_block_size = max_t(unsigned int, limits->logical_block_size, 4096);
	limits->physical_block_size = max_t(unsigned int, limits->physical_block_size, 4096);
	limits->io_min = max_t(unsigned int, limits->io_min, 4096);
	limits->discard_granularity = 4096;
	limits->max_hw_discard_sectors = max_discard_sectors;
}

static DEFINE_RATELIMIT_STATE(mlsdisk_rs, DEFAULT_RATELIMIT_INTERVAL,
			      DEFAULT_RATELIMIT_BURST);

bool mlsdisk_ratelimit(void)
{
	return __ratelimit(&mlsdisk_rs);
}
