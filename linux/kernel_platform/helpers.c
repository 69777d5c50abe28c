// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * C helpers for inline functions and macros the Rust side cannot call
 * directly. Declared in bindings/mlsdisk_helpers.h; every function is a
 * single accessor, so the rules of the wrapped API apply unchanged.
 */
#include "bindings/mlsdisk_helpers.h"

sector_t mlsdisk_bio_sector(const struct bio *bio)
{
	return bio->bi_iter.bi_sector;
}

unsigned int mlsdisk_bio_sectors(const struct bio *bio)
{
	return bio_sectors(bio);
}

unsigned int mlsdisk_bio_op(const struct bio *bio)
{
	return bio_op(bio);
}

bool mlsdisk_bio_preflush(const struct bio *bio)
{
	return bio->bi_opf & REQ_PREFLUSH;
}

bool mlsdisk_bio_fua(const struct bio *bio)
{
	return bio->bi_opf & REQ_FUA;
}

unsigned int mlsdisk_online_cpus(void)
{
	return num_online_cpus();
}

sector_t mlsdisk_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}
