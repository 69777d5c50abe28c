/* SPDX-License-Identifier: MPL-2.0 OR GPL-2.0 */
/*
 * C side of the blk-mq disk /dev/mlsdisk<N> (blk/helpers.c); bindgen reads
 * it through mlsdisk_helpers.h.
 */
#ifndef MLSDISK_BLK_HELPERS_H
#define MLSDISK_BLK_HELPERS_H

#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/types.h>

/*
 * The module parameters disk_backing, disk_key, disk_mode, disk_anchor,
 * disk_cache_mib (perms 0: not in sysfs): NULL when not given; set before
 * module init and freed after module exit, read only in between.
 */
extern char *mlsdisk_disk_backing;
extern char *mlsdisk_disk_key;
extern char *mlsdisk_disk_mode;
extern char *mlsdisk_disk_anchor;
extern char *mlsdisk_disk_cache_mib;
/* Overwrites the disk_key parameter's string with zeros. */
void mlsdisk_blk_wipe_key_param(void);

/*
 * Allocates the disk on `set` with `queuedata`, 4 KiB blocks, a volatile
 * write cache with FUA (so flushes reach the driver), discard, requests of
 * at most `max_sectors`, capacity `sectors`; names it mlsdisk<index> and
 * adds it. Returns the disk or an ERR_PTR; on error nothing is left behind
 * (the caller still owns `queuedata`).
 */
struct gendisk *mlsdisk_blk_add_disk(struct blk_mq_tag_set *set, void *queuedata,
				     int index, u64 sectors, u32 max_sectors,
				     u32 max_discard_sectors);

/* Operation classes of mlsdisk_blk_rq_op. */
enum {
	MLSDISK_RQ_READ = 0,
	MLSDISK_RQ_WRITE = 1,
	MLSDISK_RQ_FLUSH = 2,
	MLSDISK_RQ_DISCARD = 3,
	MLSDISK_RQ_OTHER = 4,
};
u64 mlsdisk_blk_rq_pos(struct request *rq);
u32 mlsdisk_blk_rq_bytes(struct request *rq);
u32 mlsdisk_blk_rq_op(struct request *rq);
/*
 * Copies the request's data segments into `buf` (to_rq false) or from it
 * (to_rq true). Returns the bytes copied; less than the request's size
 * only if `len` is too small (then nothing past `len` is touched).
 */
size_t mlsdisk_blk_rq_copy(struct request *rq, void *buf, size_t len, bool to_rq);
/* Ends a request the driver owns with errno_to_blk_status(err). */
void mlsdisk_blk_rq_end(struct request *rq, int err);

#endif
