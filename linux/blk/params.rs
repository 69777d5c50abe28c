// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The module parameters of the blk-mq disks (`disk_backing`, `disk_key`,
//! `disk_mode`, `disk_anchor`, `disk_cache_mib`; see `mod.rs`): the comma
//! lists, the keys (the `disk_key` string is wiped whatever happens) and
//! each disk's checked parameters.

use super::*;

/// A parameter as bytes (empty when not given).
pub(super) fn param(p: *const c_char) -> &'static [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: a module parameter's string (NUL-terminated), which lives
    // while the module does; only `mlsdisk_blk_wipe_key_param` writes it,
    // after the last use of the key's bytes.
    unsafe { CStr::from_char_ptr(p) }.to_bytes()
}

/// The items of a comma-separated list parameter (none when empty).
pub(super) fn items(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.split(|&c| c == b',').take_while(move |_| !p.is_empty())
}

/// The item of a list parameter for disk `i` of `n`: the list has either
/// one item (for every disk) or `n`. `None` if not given (an empty list).
/// The count was checked by [`check_count`].
pub(super) fn item_for(p: &[u8], i: usize) -> Option<&[u8]> {
    let count = items(p).count();
    match count {
        0 => None,
        1 => items(p).next(),
        _ => items(p).nth(i),
    }
}

/// Fails unless the list parameter `name` has 0, 1 or `n` items.
pub(super) fn check_count(name: &str, p: &[u8], n: usize) -> Result {
    let count = items(p).count();
    if count <= 1 || count == n {
        return Ok(());
    }
    pr_err!(
        "{}: {} items for {} disks in disk_backing (give one for all, or one per disk)\n",
        name,
        count,
        n
    );
    Err(EINVAL)
}

/// Parses one key (hex or keyring reference) for disk `index` into `key`,
/// in place.
pub(super) fn parse_one_key(index: usize, arg: &[u8], key: &mut RawKey) -> Result {
    match table::parse_key(arg) {
        Ok(KeySpec::Hex(hex)) => {
            key.set_hex(hex);
            Ok(())
        }
        Ok(KeySpec::Keyring(r)) => {
            crate::kernel_platform::crypto::keyring_key(&r, key).map_err(|e| {
                pr_err!("mlsdisk{}: disk_key: {}\n", index, e.msg);
                e.err
            })
        }
        Err(e) => {
            pr_err!("mlsdisk{}: disk_key: {}\n", index, format_args!("{e}"));
            Err(EINVAL)
        }
    }
}

/// Wipes the `disk_key` parameter when dropped. Module init holds one from
/// its first line, so that the key's string is zeroed on every path out of
/// init, the early failures included (a selftest, the workqueue, the dm
/// registration): a failed `insmod` frees the parameter with a plain
/// `kfree`, which would leave the key in freed memory.
pub(crate) struct KeyParamWipe;

impl Drop for KeyParamWipe {
    fn drop(&mut self) {
        // SAFETY: no preconditions; nothing borrows the parameter's string
        // past init, and the guard is dropped at the end of init.
        unsafe { ffi::mlsdisk_blk_wipe_key_param() };
    }
}

/// The root keys of the `n` disks from the `disk_key` parameter (one for
/// all, or one per disk), which is wiped whether or not it parses.
pub(super) fn take_keys(n: usize) -> Result<KVec<RawKey>> {
    // SAFETY: the parameter is set before module init (which calls this)
    // and not changed while the module lives.
    let arg = param(unsafe { ffi::mlsdisk_disk_key });
    let keys = (|| -> Result<KVec<RawKey>> {
        check_count("disk_key", arg, n)?;
        // Room for every key up front, so the vector never moves (a move of
        // the buffer would leave the keys behind in freed memory); each key
        // is pushed empty and filled in its slot.
        let mut keys = KVec::with_capacity(n, GFP_KERNEL)?;
        for i in 0..n {
            let Some(one) = item_for(arg, i) else {
                pr_err!("mlsdisk{}: disk_key not given\n", i);
                return Err(EINVAL);
            };
            keys.push(RawKey::empty(), GFP_KERNEL)?;
            let Some(key) = keys.last_mut() else {
                return Err(EINVAL);
            };
            parse_one_key(i, one, key)?;
        }
        Ok(keys)
    })();
    // SAFETY: no preconditions; `arg` is not used after this.
    unsafe { ffi::mlsdisk_blk_wipe_key_param() };
    keys
}

/// What the module parameters say about one disk.
pub(super) struct DiskParams<'a> {
    pub(super) backing: &'a [u8],
    pub(super) dev: u32,
    pub(super) create: bool,
    /// `force_create`: format even over an existing mlsdisk.
    pub(super) force: bool,
    /// The anchor's name and `dev_t`.
    pub(super) anchor: Option<(&'a [u8], u32)>,
    /// The caches' memory budget in MiB (`None`: the engine's default).
    pub(super) cache_mib: Option<u32>,
}

/// The cache budget of disk `i` from the `disk_cache_mib` list: `None`
/// (the engine's default) when not given, else a number of MiB in the
/// table option's range ([`table::CACHE_MIB_MIN`] to
/// [`table::CACHE_MIB_MAX`]).
pub(super) fn cache_mib_for(i: usize, cache: &[u8]) -> Result<Option<u32>> {
    let Some(item) = item_for(cache, i) else {
        return Ok(None);
    };
    match table::parse_cache_mib(item) {
        Some(mib) => Ok(Some(mib)),
        None => {
            pr_err!(
                "mlsdisk{}: disk_cache_mib '{}': expected a number of MiB from {} to {}\n",
                i,
                format_args!("{}", table::Escaped(item)),
                table::CACHE_MIB_MIN,
                table::CACHE_MIB_MAX
            );
            Err(EINVAL)
        }
    }
}

/// The parameters of disk `i` of `n`, checked (mode, cache budget, devices
/// found, the anchor not the backing device).
pub(super) fn disk_params<'a>(
    i: usize,
    backing: &'a [u8],
    mode: &'a [u8],
    anchors: &'a [u8],
    cache: &[u8],
) -> Result<DiskParams<'a>> {
    let (create, force) = match item_for(mode, i).unwrap_or(b"") {
        b"" | b"open" => (false, false),
        b"create" => (true, false),
        b"force_create" => (true, true),
        other => {
            pr_err!(
                "mlsdisk{}: disk_mode '{}': expected 'create', 'force_create' or 'open'\n",
                i,
                format_args!("{}", table::Escaped(other))
            );
            return Err(EINVAL);
        }
    };
    let cache_mib = cache_mib_for(i, cache)?;
    let dev = device_number(backing).inspect_err(|e| {
        pr_err!(
            "mlsdisk{}: cannot find the backing device '{}': error {}\n",
            i,
            format_args!("{}", table::Escaped(backing)),
            e.to_errno()
        );
    })?;
    let anchor = match item_for(anchors, i).unwrap_or(b"none") {
        b"none" => None,
        name => {
            if cfg!(mlsdisk_passthrough) {
                pr_err!(
                    "mlsdisk{}: disk_anchor needs the engine (not the pass-through build)\n",
                    i
                );
                return Err(EINVAL);
            }
            let adev = device_number(name).inspect_err(|e| {
                pr_err!(
                    "mlsdisk{}: cannot find the anchor device '{}': error {}\n",
                    i,
                    format_args!("{}", table::Escaped(name)),
                    e.to_errno()
                );
            })?;
            Some((name, adev))
        }
    };
    Ok(DiskParams {
        backing,
        dev,
        create,
        force,
        anchor,
        cache_mib,
    })
}
