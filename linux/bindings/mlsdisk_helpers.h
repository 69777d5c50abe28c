/* SPDX-License-Identifier: MPL-2.0 OR GPL-2.0 */
/*
 * The C API the mlsdisk module uses beyond what the kernel crate binds.
 *
 * bindgen reads this header during the module build (see linux/Kbuild) and
 * generates Rust declarations for everything declared in
 * <linux/device-mapper.h> and here; types from other headers (struct bio,
 * struct block_device, ...) come from the kernel crate's own bindings, so
 * they are the same Rust types the rest of the kernel crate uses.
 *
 * The functions below wrap inline functions and macros, which bindgen cannot
 * bind; linux/helpers.c defines them. Each is a one-line accessor with no
 * logic of its own.
 */
#ifndef MLSDISK_HELPERS_H
#define MLSDISK_HELPERS_H

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>

/* bio->bi_iter.bi_sector */
sector_t mlsdisk_bio_sector(const struct bio *bio);
/* bio->bi_iter.bi_sector = sector */
void mlsdisk_bio_set_sector(struct bio *bio, sector_t sector);
/* bio_sectors(): the size of the bio in 512-byte sectors */
unsigned int mlsdisk_bio_sectors(const struct bio *bio);
/* The operations the target tells apart (values of enum req_op). */
enum mlsdisk_req_op {
	MLSDISK_REQ_OP_READ = REQ_OP_READ,
	MLSDISK_REQ_OP_WRITE = REQ_OP_WRITE,
	MLSDISK_REQ_OP_FLUSH = REQ_OP_FLUSH,
	MLSDISK_REQ_OP_DISCARD = REQ_OP_DISCARD,
};
/* bio_op(): the REQ_OP_* of the bio */
unsigned int mlsdisk_bio_op(const struct bio *bio);
/* bio->bi_opf & REQ_PREFLUSH: flush the cache before this bio */
bool mlsdisk_bio_preflush(const struct bio *bio);
/* bio->bi_opf & REQ_FUA: this bio is durable on completion */
bool mlsdisk_bio_fua(const struct bio *bio);
/* bio_set_dev(): point the bio at another block device */
void mlsdisk_bio_set_dev(struct bio *bio, struct block_device *bdev);
/* bdev_nr_sectors(): the size of a block device in 512-byte sectors */
sector_t mlsdisk_bdev_nr_sectors(struct block_device *bdev);

#endif /* MLSDISK_HELPERS_H */
