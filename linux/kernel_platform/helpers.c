// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * C helpers for inline functions and macros the Rust side cannot call
 * directly. Declared in bindings/mlsdisk_helpers.h; each wraps one inline
 * function or macro, so the rules of the wrapped API apply unchanged.
 */
#include <linux/ratelimit.h>

#include "bindings/mlsdisk_helpers.h"

unsigned int mlsdisk_bio_sectors(const struct bio *bio)
{
	return bio_sectors(bio);
}

unsigned int mlsdisk_bio_op(const struct bio *bio)
{
	return bio_op(bio);
}

sector_t mlsdisk_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
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

static DEFINE_RATELIMIT_STATE(mlsdisk_rs, DEFAULT_RATELIMIT_INTERVAL,
			      DEFAULT_RATELIMIT_BURST);

bool mlsdisk_ratelimit(void)
{
	return __ratelimit(&mlsdisk_rs);
}
