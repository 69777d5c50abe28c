// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0
/*
 * The kernel side of the core engine's platform boundary, in C where the
 * kernel's APIs are macros, inline functions or scatterlist/bio plumbing:
 *
 * - a pool of synchronous "gcm(aes)" AEAD transforms, allocated once per
 *   pool (one slot per possible CPU), used with a fresh key per call;
 * - SHA-256 and HMAC-SHA256 from the kernel's crypto library;
 * - synchronous multi-page bio I/O on the backing device;
 * - keyring payloads, memalloc_noio scopes, running on a fresh stack.
 *
 * Opening, claiming, closing and flushing block devices and random bytes
 * are in Rust (kernel_platform/bio.rs, crypto.rs) on the kernel crate's
 * bindings of the exported functions.
 *
 * The Rust side (kernel_platform/crypto.rs, kernel_platform/bio.rs) owns these objects through safe
 * types. Declarations and contracts: bindings/mlsdisk_helpers.h.
 *
 * Buffers: the engine's memory comes from kvmalloc (linear map or vmalloc),
 * and small values may live on a vmap'd stack or in module data. Every
 * buffer is therefore described page by page (vmalloc_to_page for vmalloc
 * and module addresses, virt_to_page otherwise), never with sg_set_buf on
 * an address that may not be in the linear map.
 */
#define pr_fmt(fmt) "mlsdisk: " fmt

#include <crypto/aead.h>
#include <crypto/sha2.h>
#include <keys/user-type.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/cpumask.h>
#include <linux/highmem.h>
#include <linux/key.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/ratelimit.h>
#include <linux/scatterlist.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#include "bindings/mlsdisk_helpers.h"

#define MLSDISK_IV_LEN 12
#define MLSDISK_TAG_LEN 16
/* AAD up to this size is copied into the slot's scratch buffer. */
#define MLSDISK_SCRATCH_AAD 512
/* Scratch layout: IV (16 bytes reserved), tag (16), AAD. */
#define MLSDISK_SCRATCH_LEN (32 + MLSDISK_SCRATCH_AAD)
/* Scatterlist entries kept per slot: AAD + 32 data pages + tag. */
#define MLSDISK_SLOT_SG 34
/* Most slots a pool has. */
#define MLSDISK_MAX_SLOTS 64

struct mlsdisk_aead_slot {
	struct mutex lock;
	struct crypto_aead *tfm;
	struct aead_request *req;
	u8 *scratch;
	struct scatterlist sg[MLSDISK_SLOT_SG];
};

struct mlsdisk_aead_pool {
	unsigned int nr;
	struct mlsdisk_aead_slot slots[] __counted_by(nr);
};

/* The page holding kernel address `p`. */
static struct page *mlsdisk_addr_page(const void *p)
{
	if (is_vmalloc_or_module_addr(p))
		return vmalloc_to_page(p);
	return virt_to_page(p);
}

/* Pages touched by `len` bytes at `p`. */
static size_t mlsdisk_pages(const void *p, size_t len)
{
	return len ? DIV_ROUND_UP(offset_in_page(p) + len, PAGE_SIZE) : 0;
}

void mlsdisk_aead_pool_free(struct mlsdisk_aead_pool *pool)
{
	unsigned int i;

	if (!pool)
		return;
	for (i = 0; i < pool->nr; i++) {
		struct mlsdisk_aead_slot *slot = &pool->slots[i];

		aead_request_free(slot->req);
		/* crypto_free_aead zeroes the transform's key schedule. */
		if (!IS_ERR_OR_NULL(slot->tfm))
			crypto_free_aead(slot->tfm);
		kfree(slot->scratch);
		mutex_destroy(&slot->lock);
	}
	kvfree(pool);
}

struct mlsdisk_aead_pool *mlsdisk_aead_pool_new(unsigned int nr, int *err)
{
	struct mlsdisk_aead_pool *pool;
	unsigned int i;

	if (!nr)
		nr = num_possible_cpus();
	nr = clamp(nr, 1U, (unsigned int)MLSDISK_MAX_SLOTS);
	pool = kvzalloc(struct_size(pool, slots, nr), GFP_KERNEL);
	if (!pool) {
		*err = -ENOMEM;
		return NULL;
	}
	pool->nr = nr;
	for (i = 0; i < nr; i++)
		mutex_init(&pool->slots[i].lock);
	for (i = 0; i < nr; i++) {
		struct mlsdisk_aead_slot *slot = &pool->slots[i];

		/* Mask CRYPTO_ALG_ASYNC: synchronous implementations only. */
		slot->tfm = crypto_alloc_aead("gcm(aes)", 0, CRYPTO_ALG_ASYNC);
		if (IS_ERR(slot->tfm)) {
			*err = PTR_ERR(slot->tfm);
			slot->tfm = NULL;
			goto fail;
		}
		*err = crypto_aead_setauthsize(slot->tfm, MLSDISK_TAG_LEN);
		if (*err)
			goto fail;
		if (crypto_aead_ivsize(slot->tfm) != MLSDISK_IV_LEN) {
			*err = -EINVAL;
			goto fail;
		}
		slot->req = aead_request_alloc(slot->tfm, GFP_KERNEL);
		slot->scratch = kmalloc(MLSDISK_SCRATCH_LEN, GFP_KERNEL);
		if (!slot->req || !slot->scratch) {
			*err = -ENOMEM;
			goto fail;
		}
	}
	*err = 0;
	return pool;
fail:
	mlsdisk_aead_pool_free(pool);
	return NULL;
}

unsigned int mlsdisk_aead_pool_slots(const struct mlsdisk_aead_pool *pool)
{
	return pool->nr;
}

const char *mlsdisk_aead_pool_driver(const struct mlsdisk_aead_pool *pool)
{
	return crypto_aead_driver_name(pool->slots[0].tfm);
}

/* Appends the pages of `len` bytes at `p` to `sg` (at most `max` entries). */
static int mlsdisk_sg_add(struct scatterlist *sg, unsigned int max,
			  unsigned int *n, const u8 *p, size_t len)
{
	while (len) {
		unsigned int off = offset_in_page(p);
		size_t chunk = min_t(size_t, len, PAGE_SIZE - off);
		struct page *page;

		if (*n >= max)
			return -E2BIG;
		page = mlsdisk_addr_page(p);
		if (!page)
			return -EFAULT;
		sg_set_page(&sg[*n], page, chunk, off);
		(*n)++;
		p += chunk;
		len -= chunk;
	}
	return 0;
}

int mlsdisk_aead_crypt(struct mlsdisk_aead_pool *pool, bool encrypt,
		       const u8 *key, unsigned int key_len, const u8 *iv,
		       const u8 *aad, unsigned int aad_len,
		       u8 *data, unsigned int len, u8 *tag)
{
	struct mlsdisk_aead_slot *slot;
	struct scatterlist *sg;
	DECLARE_CRYPTO_WAIT(wait);
	u8 *s_iv, *s_tag, *aad_buf;
	unsigned int nsg, n = 0;
	int ret;

	if ((key_len != 16 && key_len != 32) || len > UINT_MAX - MLSDISK_TAG_LEN)
		return -EINVAL;
	nsg = (aad_len ? 1 : 0) + mlsdisk_pages(data, len) + 1;

	/* Any slot is correct; the current CPU's is the likely free one. */
	slot = &pool->slots[raw_smp_processor_id() % pool->nr];
	mutex_lock(&slot->lock);
	s_iv = slot->scratch;
	s_tag = s_iv + 16;
	aad_buf = s_tag + 16;
	sg = slot->sg;
	if (nsg > MLSDISK_SLOT_SG) {
		sg = kmalloc_array(nsg, sizeof(*sg), GFP_KERNEL);
		if (!sg) {
			ret = -ENOMEM;
			goto out;
		}
	}
	if (aad_len > MLSDISK_SCRATCH_AAD) {
		aad_buf = kmalloc(aad_len, GFP_KERNEL);
		if (!aad_buf) {
			ret = -ENOMEM;
			goto out;
		}
	}
	/* IV, AAD and tag are small: copied into linear memory. */
	memcpy(s_iv, iv, MLSDISK_IV_LEN);
	memcpy(aad_buf, aad, aad_len);
	if (!encrypt)
		memcpy(s_tag, tag, MLSDISK_TAG_LEN);

	sg_init_table(sg, nsg);
	if (aad_len)
		sg_set_buf(&sg[n++], aad_buf, aad_len);
	ret = mlsdisk_sg_add(sg, nsg - 1, &n, data, len);
	if (ret)
		goto out;
	sg_set_buf(&sg[n++], s_tag, MLSDISK_TAG_LEN);

	ret = crypto_aead_setkey(slot->tfm, key, key_len);
	if (ret)
		goto out;
	aead_request_set_callback(slot->req, CRYPTO_TFM_REQ_MAY_SLEEP,
				  crypto_req_done, &wait);
	aead_request_set_ad(slot->req, aad_len);
	aead_request_set_crypt(slot->req, sg, sg,
			       encrypt ? len : len + MLSDISK_TAG_LEN, s_iv);
	ret = crypto_wait_req(encrypt ? crypto_aead_encrypt(slot->req) :
					crypto_aead_decrypt(slot->req),
			      &wait);
	if (!ret && encrypt)
		memcpy(tag, s_tag, MLSDISK_TAG_LEN);
out:
	if (sg != slot->sg)
		kfree(sg);
	if (aad_buf != s_tag + 16)
		kfree(aad_buf);
	mutex_unlock(&slot->lock);
	return ret;
}

void mlsdisk_sha256(const struct mlsdisk_part *parts, size_t n, u8 *out)
{
	struct sha256_ctx ctx;
	size_t i;

	sha256_init(&ctx);
	for (i = 0; i < n; i++)
		sha256_update(&ctx, parts[i].data, parts[i].len);
	sha256_final(&ctx, out);
}

void mlsdisk_hmac_sha256(const u8 *key, size_t key_len,
			 const struct mlsdisk_part *parts, size_t n, u8 *out)
{
	struct hmac_sha256_ctx ctx;
	size_t i;

	hmac_sha256_init_usingrawkey(&ctx, key, key_len);
	for (i = 0; i < n; i++)
		hmac_sha256_update(&ctx, parts[i].data, parts[i].len);
	/* Also wipes the context. */
	hmac_sha256_final(&ctx, out);
}

static void mlsdisk_io_failed(struct block_device *bdev, bool write,
			      sector_t sector, size_t len, int err)
{
	pr_err_ratelimited("backing device %pg: %s of %zu bytes at sector %llu failed: error %d\n",
			   bdev, write ? "write" : "read", len,
			   (unsigned long long)sector, err);
}

/* One page at a time through a bounce page, for unaligned buffers. */
static int mlsdisk_bdev_rw_bounce(struct block_device *bdev, bool write,
				  sector_t sector, u8 *buf, size_t len)
{
	struct page *page = alloc_page(GFP_NOIO);
	int ret = 0;

	if (!page)
		return -ENOMEM;
	while (len && !ret) {
		size_t chunk = min_t(size_t, len, PAGE_SIZE);
		struct bio *bio = bio_alloc(bdev, 1, write ? REQ_OP_WRITE | REQ_SYNC : REQ_OP_READ,
					    GFP_NOIO);

		bio->bi_iter.bi_sector = sector;
		__bio_add_page(bio, page, chunk, 0);
		if (write)
			memcpy(page_address(page), buf, chunk);
		ret = submit_bio_wait(bio);
		bio_put(bio);
		if (ret)
			mlsdisk_io_failed(bdev, write, sector, chunk, ret);
		else if (!write)
			memcpy(buf, page_address(page), chunk);
		buf += chunk;
		len -= chunk;
		sector += chunk >> SECTOR_SHIFT;
	}
	__free_page(page);
	return ret;
}

/*
 * One bio of operation `opf` over the pages of `*p` (up to BIO_MAX_VECS of
 * them) at `sector`; advances `*p` and `*len` past what it holds. NULL
 * when not even one page could be added (then nothing moved).
 */
static struct bio *mlsdisk_next_bio(struct block_device *bdev, blk_opf_t opf,
				    sector_t sector, u8 **p, size_t *len)
{
	unsigned short nr = min_t(size_t, mlsdisk_pages(*p, *len), BIO_MAX_VECS);
	struct bio *bio = bio_alloc(bdev, nr, opf, GFP_NOIO);
	size_t done = 0;

	bio->bi_iter.bi_sector = sector;
	while (*len) {
		unsigned int off = offset_in_page(*p);
		unsigned int chunk = min_t(size_t, *len, PAGE_SIZE - off);

		if (bio_add_page(bio, mlsdisk_addr_page(*p), chunk, off) != chunk)
			break;
		*p += chunk;
		*len -= chunk;
		done += chunk;
	}
	if (!done) {
		bio_put(bio);
		return NULL;
	}
	return bio;
}

int mlsdisk_bdev_rw(struct block_device *bdev, bool write, sector_t sector,
		    void *buf, size_t len)
{
	blk_opf_t opf = write ? REQ_OP_WRITE | REQ_SYNC : REQ_OP_READ;
	u8 *p = buf;

	if (len & (SECTOR_SIZE - 1))
		return -EINVAL;
	if ((unsigned long)buf & (SECTOR_SIZE - 1))
		return mlsdisk_bdev_rw_bounce(bdev, write, sector, buf, len);
	while (len) {
		bool vmap = is_vmalloc_or_module_addr(p);
		u8 *start = p;
		size_t before = len, done;
		struct bio *bio = mlsdisk_next_bio(bdev, opf, sector, &p, &len);
		int ret;

		if (!bio) {
			mlsdisk_io_failed(bdev, write, sector, len, -EIO);
			return -EIO;
		}
		done = before - len;
		if (vmap && write)
			flush_kernel_vmap_range(start, done);
		ret = submit_bio_wait(bio);
		bio_put(bio);
		if (ret) {
			mlsdisk_io_failed(bdev, write, sector, done, ret);
			return ret;
		}
		if (vmap && !write)
			invalidate_kernel_vmap_range(start, done);
		sector += done >> SECTOR_SHIFT;
	}
	return 0;
}

int mlsdisk_bdev_read_ranges(struct block_device *bdev,
			     const struct mlsdisk_range *ranges, size_t n)
{
	struct bio *last = NULL;
	size_t i, total = 0;
	int ret = 0;

	for (i = 0; i < n; i++) {
		if ((ranges[i].len & (SECTOR_SIZE - 1)) ||
		    ((unsigned long)ranges[i].buf & (SECTOR_SIZE - 1)))
			goto one_by_one;
		total += ranges[i].len;
	}
	/*
	 * Every bio is chained to the next one and submitted as soon as the
	 * next exists (as blk_next_bio does): the last one completes only
	 * after all the others, carries the first error of any, and is the
	 * one waited for. At most two bios are unsubmitted at any time.
	 */
	for (i = 0; i < n && !ret; i++) {
		u8 *p = ranges[i].buf;
		size_t len = ranges[i].len;
		sector_t sector = ranges[i].sector;

		while (len) {
			size_t before = len;
			struct bio *bio = mlsdisk_next_bio(bdev, REQ_OP_READ, sector, &p, &len);

			if (!bio) {
				mlsdisk_io_failed(bdev, false, sector, len, -EIO);
				ret = -EIO;
				break;
			}
			sector += (before - len) >> SECTOR_SHIFT;
			if (last) {
				bio_chain(last, bio);
				submit_bio(last);
			}
			last = bio;
		}
	}
	if (last) {
		int err = submit_bio_wait(last);

		bio_put(last);
		if (err && !ret) {
			mlsdisk_io_failed(bdev, false, ranges[0].sector, total, err);
			ret = err;
		}
	}
	if (ret)
		return ret;
	for (i = 0; i < n; i++)
		if (is_vmalloc_or_module_addr(ranges[i].buf))
			invalidate_kernel_vmap_range(ranges[i].buf, ranges[i].len);
	return 0;

one_by_one:
	for (i = 0; i < n; i++) {
		ret = mlsdisk_bdev_rw(bdev, false, ranges[i].sector, ranges[i].buf,
				      ranges[i].len);
		if (ret)
			return ret;
	}
	return 0;
}

unsigned int mlsdisk_noio_save(void)
{
	return memalloc_noio_save();
}

void mlsdisk_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}

/* ---- Keyring keys ---------------------------------------------------- */

int mlsdisk_keyring_read(bool logon, const char *desc, u8 *out, unsigned int size)
{
	const struct user_key_payload *ukp;
	struct key *key;
	int ret;

	key = request_key(logon ? &key_type_logon : &key_type_user, desc, NULL);
	if (IS_ERR(key))
		return PTR_ERR(key);
	down_read(&key->sem);
	ukp = user_key_payload_locked(key);
	if (!ukp) {
		ret = -EKEYREVOKED;
	} else if (ukp->datalen != size) {
		ret = -EMSGSIZE;
	} else {
		memcpy(out, ukp->data, size);
		ret = 0;
	}
	up_read(&key->sem);
	key_put(key);
	return ret;
}

/* ---- Running on a fresh stack ------------------------------------------ */

struct mlsdisk_onstack_work {
	struct work_struct work;
	void (*fn)(void *arg);
	void *arg;
};

static void mlsdisk_onstack_fn(struct work_struct *work)
{
	struct mlsdisk_onstack_work *w =
		container_of(work, struct mlsdisk_onstack_work, work);
	/* Syncs and closes run while writeback may wait for the engine. */
	unsigned int noio = memalloc_noio_save();

	w->fn(w->arg);
	memalloc_noio_restore(noio);
}

void mlsdisk_run_on_worker(struct workqueue_struct *wq, void (*fn)(void *arg), void *arg)
{
	struct mlsdisk_onstack_work w = { .fn = fn, .arg = arg };

	INIT_WORK_ONSTACK(&w.work, mlsdisk_onstack_fn);
	/* The module's WQ_MEM_RECLAIM queue (kernel_platform/parallel.rs); the
	 * system one only if it is not there (never after module init made it). */
	queue_work(wq ? wq : system_dfl_long_wq, &w.work);
	flush_work(&w.work);
	destroy_work_on_stack(&w.work);
}
