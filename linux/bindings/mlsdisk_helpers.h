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
 * bind; kernel_platform/helpers.c and platform.c define them. Each is a one-line accessor with no
 * logic of its own.
 */
#ifndef MLSDISK_HELPERS_H
#define MLSDISK_HELPERS_H

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>

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
/*
 * The flags the module tests in bio->bi_opf and rq->cmd_flags: the macros
 * are casts, which bindgen does not evaluate. REQ_PREFLUSH: flush the
 * cache before this I/O; REQ_FUA: durable on completion.
 */
enum mlsdisk_req_flag {
	MLSDISK_REQ_PREFLUSH = (__force unsigned int)REQ_PREFLUSH,
	MLSDISK_REQ_FUA = (__force unsigned int)REQ_FUA,
};
/* bdev_nr_sectors(): the size of a block device in 512-byte sectors */
sector_t mlsdisk_bdev_nr_sectors(struct block_device *bdev);

/*
 * Kernel platform for the core engine (linux/kernel_platform/platform.c): the crypto
 * provider and the backing-device block I/O. Unlike the accessors above,
 * these hold a little logic of their own (scatterlists, bios); the Rust
 * side (kernel_platform/crypto.rs, kernel_platform/bio.rs) wraps them in safe types.
 */

/* One piece of a message for the hash helpers. */
struct mlsdisk_part {
	const u8 *data;
	size_t len;
};

/*
 * A pool of synchronous "gcm(aes)" AEAD transforms, allocated once: one
 * slot per possible CPU (capped), each with its own mutex, request and
 * scratch buffer. A caller takes the slot of the CPU it runs on (any slot
 * works; the mutex makes it exclusive), sets the key, runs the request.
 */
struct mlsdisk_aead_pool;

/* Allocates a pool of `nr` slots (0: one per possible CPU, at most 64).
 * Returns NULL with *err set (-ENOMEM, or the crypto API's error such as
 * -ENOENT when gcm(aes) is missing). Sleeps. */
struct mlsdisk_aead_pool *mlsdisk_aead_pool_new(unsigned int nr, int *err);
/* Frees the pool; no call may be running on it. */
void mlsdisk_aead_pool_free(struct mlsdisk_aead_pool *pool);
/* The number of slots. */
unsigned int mlsdisk_aead_pool_slots(const struct mlsdisk_aead_pool *pool);
/* The driver name of the transforms, e.g. "generic-gcm-aesni". */
const char *mlsdisk_aead_pool_driver(const struct mlsdisk_aead_pool *pool);

/*
 * AES-GCM with a 12-byte IV and a detached 16-byte tag, in place on
 * `data` (`len` bytes, any kernel address: linear map, vmalloc, vmap'd
 * stack or module data). Encrypt writes `tag`; decrypt checks it and
 * returns -EBADMSG on a mismatch. `key` is 16 or 32 bytes. Sleeps.
 */
int mlsdisk_aead_crypt(struct mlsdisk_aead_pool *pool, bool encrypt,
		       const u8 *key, unsigned int key_len, const u8 *iv,
		       const u8 *aad, unsigned int aad_len,
		       u8 *data, unsigned int len, u8 *tag);

/* SHA-256 over the concatenation of `n` parts (library sha256). */
void mlsdisk_sha256(const struct mlsdisk_part *parts, size_t n, u8 *out);
/* HMAC-SHA256 under `key` over the concatenation of `n` parts. */
void mlsdisk_hmac_sha256(const u8 *key, size_t key_len,
			 const struct mlsdisk_part *parts, size_t n, u8 *out);

/*
 * Synchronous I/O of `len` bytes (a multiple of 512) at `sector` of
 * `bdev`, into or from `buf` (any kernel address, as above). Whole runs go
 * out as multi-page bios (up to BIO_MAX_VECS pages each) and are waited
 * for; a buffer that is not 512-byte aligned is bounced through a page.
 * Writes are REQ_SYNC; durability comes from a cache flush
 * (blkdev_issue_flush, called from kernel_platform/bio.rs). Returns 0
 * or a negative errno. Sleeps.
 */
int mlsdisk_bdev_rw(struct block_device *bdev, bool write, sector_t sector,
		    void *buf, size_t len);
/* One range of a mlsdisk_bdev_read_ranges call: `len` bytes (a multiple
 * of 512) at `sector`, into `buf` (any kernel address). */
struct mlsdisk_range {
	sector_t sector;
	void *buf;
	size_t len;
};
/*
 * Reads `n` ranges with every bio in flight at once (chained to the last,
 * which is waited for); the ranges may be anywhere on the device, in any
 * order. If any buffer is not 512-byte aligned, reads them one after
 * another as mlsdisk_bdev_rw does. Returns 0 or a negative errno (the
 * first error of any bio; which ranges were read is then unspecified).
 * Sleeps.
 */
int mlsdisk_bdev_read_ranges(struct block_device *bdev,
			     const struct mlsdisk_range *ranges, size_t n);
/* memalloc_noio_save/restore: allocations in between do no I/O. */
unsigned int mlsdisk_noio_save(void);
void mlsdisk_noio_restore(unsigned int flags);

/* Copies the bio's data (its whole remaining iterator, `len` bytes) into
 * `buf` (to_bio = false) or from `buf` into the bio (to_bio = true).
 * Returns the bytes copied. */
size_t mlsdisk_bio_copy(struct bio *bio, u8 *buf, size_t len, bool to_bio);

/* A shared printk rate limit for the target's per-bio errors. */
bool mlsdisk_ratelimit(void);

/*
 * Reads the payload of a "logon" (logon = true) or "user" key with
 * description `desc` (NUL-terminated) from the caller's keyrings into
 * `out`, which has `size` bytes; the payload must be exactly `size` bytes.
 * Returns 0, -ENOKEY (not found), -EKEYREVOKED/-EKEYEXPIRED, -EACCES,
 * -EMSGSIZE (other size), or another negative errno. Sleeps.
 */
int mlsdisk_keyring_read(bool logon, const char *desc, u8 *out, unsigned int size);

/*
 * blk_mode_t flags for bdev_file_open_by_dev (kernel_platform/bio.rs):
 * the macros are casts, which bindgen does not evaluate.
 */
enum mlsdisk_blk_open {
	MLSDISK_BLK_OPEN_READ = (__force unsigned int)BLK_OPEN_READ,
	MLSDISK_BLK_OPEN_WRITE = (__force unsigned int)BLK_OPEN_WRITE,
};

/*
 * Runs fn(arg) on a kworker of `wq` (system_dfl_long_wq if NULL) in a
 * memalloc_noio scope and waits for it: a fresh, shallow stack for the
 * engine's deep calls (create/open/sync) that would otherwise stack on top
 * of an ioctl path. Sleeps.
 */
void mlsdisk_run_on_worker(struct workqueue_struct *wq, void (*fn)(void *arg), void *arg);

/* The other helpers' headers: bindgen reads them through this one. */
#include "blk_helpers.h"

#endif /* MLSDISK_HELPERS_H */
