// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * C side of the blk-mq disk /dev/mlsdisk<N> (blk/mod.rs): the module
 * parameters, the gendisk (queue limits and a block_device_operations with
 * .owner = THIS_MODULE, which the Rust GenDiskBuilder of 7.3 cannot set:
 * without it an open disk would not pin the module), request accessors for
 * what the Rust Request does not expose (sector, length, operation, data
 * segments, ending with an error). The disk's workqueues are in Rust:
 * blk/reads.rs (parallel reads), kernel_platform/work.rs (the ordered
 * queue).
 */
#include <linux/bio.h>
#include <linux/bvec.h>
#include <linux/err.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/refcount.h>
#include <linux/string.h>

#include "bindings/mlsdisk_helpers.h"

/*
 * Permissions 0: none of these appears under /sys/module/mlsdisk/parameters,
 * so the key is never readable back; blk/mod.rs wipes it after use. The
 * variables are declared in blk_helpers.h, which Rust reads them through.
 */
char *mlsdisk_disk_backing;
module_param_named(disk_backing, mlsdisk_disk_backing, charp, 0);
MODULE_PARM_DESC(disk_backing,
		 "backing block devices of /dev/mlsdisk0, 1, ... (comma list of paths or major:minor, at most 8); none: no disk");
char *mlsdisk_disk_key;

/*
 * disk_key is a charp parameter whose string is zeroed before the kernel
 * frees it, on every path: when the parameter is given again (param_set_charp
 * frees the earlier string), and when the module's parameters are freed
 * (after a failed init, or at unload). blkdev's init guard zeroes it too.
 */
static void mlsdisk_wipe_charp(char *p)
{
	if (p)
		memzero_explicit(p, strlen(p));
}

static int mlsdisk_key_param_set(const char *val, const struct kernel_param *kp)
{
	mlsdisk_wipe_charp(*(char **)kp->arg);
	return param_set_charp(val, kp);
}

static void mlsdisk_key_param_free(void *arg)
{
	mlsdisk_wipe_charp(*(char **)arg);
	param_free_charp(arg);
}

static const struct kernel_param_ops mlsdisk_key_param_ops = {
	.set = mlsdisk_key_param_set,
	.get = param_get_charp,
	.free = mlsdisk_key_param_free,
};
module_param_cb(disk_key, &mlsdisk_key_param_ops, &mlsdisk_disk_key, 0);
MODULE_PARM_DESC(disk_key,
		 "root keys (one for all disks or a comma list): 32 or 64 hex digits, or :<size>:logon:<description>");
char *mlsdisk_disk_mode;
module_param_named(disk_mode, mlsdisk_disk_mode, charp, 0);
MODULE_PARM_DESC(disk_mode,
		 "create (format the backing device) or open (the default); one for all disks or a comma list");
char *mlsdisk_disk_anchor;
module_param_named(disk_anchor, mlsdisk_disk_anchor, charp, 0);
MODULE_PARM_DESC(disk_anchor,
		 "rollback anchor device per disk (comma list of none, a path or major:minor); default none");
char *mlsdisk_disk_cache_mib;
module_param_named(disk_cache_mib, mlsdisk_disk_cache_mib, charp, 0);
MODULE_PARM_DESC(disk_cache_mib,
		 "memory budget of each disk's caches in MiB, as the table's cache_mib= (4 to 16384; default the engine's, 64); one for all disks or a comma list");

void mlsdisk_blk_wipe_key_param(void)
{
	mlsdisk_wipe_charp(mlsdisk_disk_key);
}

static const struct block_device_operations mlsdisk_blk_fops = {
	.owner = THIS_MODULE,
};

struct gendisk *mlsdisk_blk_add_disk(struct blk_mq_tag_set *set, void *queuedata,
				     int index, u64 sectors, u32 max_sectors,
				     u32 max_discard_sectors)
{
	struct queue_limits lim = {
		.logical_block_size = 4096,
		.physical_block_size = 4096,
		.io_min = 4096,
		.max_hw_sectors = max_sectors,
		.max_hw_discard_sectors = max_discard_sectors,
		.discard_granularity = 4096,
		/* Flushes and FUA writes must reach the driver: they mean sync. */
		.features = BLK_FEAT_WRITE_CACHE | BLK_FEAT_FUA,
	};
	struct gendisk *disk;
	int err;

	disk = blk_mq_alloc_disk(set, &lim, queuedata);
	if (IS_ERR(disk))
		return disk;
	disk->fops = &mlsdisk_blk_fops;
	disk->flags |= GENHD_FL_NO_PART;
	snprintf(disk->disk_name, DISK_NAME_LEN, "mlsdisk%d", index);
	set_capacity(disk, sectors);
	err = device_add_disk(NULL, disk, NULL);
	if (err) {
		put_disk(disk);
		return ERR_PTR(err);
	}
	return disk;
}

u64 mlsdisk_blk_rq_pos(struct request *rq)
{
	return blk_rq_pos(rq);
}

u32 mlsdisk_blk_rq_bytes(struct request *rq)
{
	return blk_rq_bytes(rq);
}

u32 mlsdisk_blk_rq_op(struct request *rq)
{
	switch (req_op(rq)) {
	case REQ_OP_READ:
		return MLSDISK_RQ_READ;
	case REQ_OP_WRITE:
		return MLSDISK_RQ_WRITE;
	case REQ_OP_FLUSH:
		return MLSDISK_RQ_FLUSH;
	case REQ_OP_DISCARD:
		return MLSDISK_RQ_DISCARD;
	default:
		return MLSDISK_RQ_OTHER;
	}
}

size_t mlsdisk_blk_rq_copy(struct request *rq, void *buf, size_t len, bool to_rq)
{
	struct bio *bio;
	size_t done = 0;

	/* The bios of the request in turn, each copied by the dm target's
	 * helper (kernel_platform/helpers.c): rq_for_each_segment walks the
	 * same segments in the same order. */
	__rq_for_each_bio(bio, rq) {
		size_t n = mlsdisk_bio_copy(bio, (u8 *)buf + done, len - done, to_rq);

		done += n;
		if (n < bio->bi_iter.bi_size)
			break;
	}
	return done;
}

void mlsdisk_blk_rq_end(struct request *rq, int err)
{
	/*
	 * The Rust request wrapper (rust/kernel/block/mq/request.rs) keeps a
	 * refcount_t, its only field, in the request's pdu: 2 while the driver
	 * holds its one ARef, 0 once the block layer owns the request again.
	 * Request::end_ok drops it from 2 to 0 before it ends a request; the
	 * 7.3 Rust API has no call that ends with an error status, so this
	 * does the same here. The tag set's pdu is that wrapper alone
	 * (cmd_size), so with that size the refcount is at its start; a
	 * wrapper of another size is left alone (queue_rq sets the count
	 * afresh, and the driver never looks a request up by tag).
	 */
	if (rq->q->tag_set->cmd_size == sizeof(refcount_t)) {
		refcount_t *ref = blk_mq_rq_to_pdu(rq);

		atomic_cmpxchg(&ref->refs, 2, 0);
	}
	blk_mq_end_request(rq, errno_to_blk_status(err));
}
