// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The target type's registration and the C trampolines device-mapper
//! calls, each into a [`Target`] method, with the target instance and its
//! bio queues (`Instance`).

use super::*;

use kernel::sync::Arc;

use super::queue::{self, OrderedBios, ServeParallel};
use crate::kernel_platform::work::{Ordered, Serve, WorkQueue};

/// A registered target type; unregistered on drop.
///
/// # Invariants
///
/// `tt` is registered with device-mapper from `new` until `drop`, and is not
/// accessed from Rust in between (device-mapper links it into its list).
pub(crate) struct Registration<T: Target> {
    tt: KBox<Opaque<target_type>>,
    _t: PhantomData<T>,
}

// SAFETY: after registration the `target_type` is only touched by
// device-mapper under its own lock, and by `drop` (unregister), which runs
// once; the registration holds no thread-bound state.
unsafe impl<T: Target> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to the `target_type` at all.
unsafe impl<T: Target> Sync for Registration<T> {}

impl<T: Target> Registration<T> {
    /// Registers target type `T` on behalf of `module`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or the errno of `dm_register_target` (e.g. `EEXIST`).
    pub(crate) fn new(module: &'static ThisModule) -> Result<Self> {
        let tt = target_type {
            name: T::NAME.as_char_ptr(),
            module: module.as_ptr(),
            version: T::VERSION,
            ctr: Some(ctr_callback::<T>),
            dtr: Some(dtr_callback::<T>),
            map: Some(map_callback::<T>),
            status: Some(status_callback::<T>),
            iterate_devices: Some(iterate_devices_callback::<T>),
            postsuspend: Some(postsuspend_callback::<T>),
            resume: Some(resume_callback::<T>),
            message: Some(message_callback::<T>),
            io_hints: Some(io_hints_callback::<T>),
            ..Default::default()
        };
        let tt = KBox::new(Opaque::new(tt), GFP_KERNEL)?;
        // SAFETY: `tt` is a fully initialised `target_type` at a stable heap
        // address that stays allocated until `drop` unregisters it.
        let ret = unsafe { bindings::dm_register_target(tt.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: registered just now.
        Ok(Self {
            tt,
            _t: PhantomData,
        })
    }
}

impl<T: Target> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered (type invariant). The module reference count
        // (`target_type.module`) keeps the module loaded while any target
        // instance exists, so none does now.
        unsafe { bindings::dm_unregister_target(self.tt.get()) };
    }
}

/// # Safety
///
/// Called by device-mapper as a `dm_ctr_fn`: `ti` valid and exclusively
/// ours, `argv` holding `argc` writable C strings.
unsafe extern "C" fn ctr_callback<T: Target>(
    ti: *mut dm_target,
    argc: c_uint,
    argv: *mut *mut c_char,
) -> c_int {
    let Some(nn_ti) = NonNull::new(ti) else {
        return EINVAL.to_errno();
    };
    let argv: &[*mut c_char] = if argv.is_null() || argc == 0 {
        &[]
    } else {
        // SAFETY: device-mapper passes `argc` valid pointers in `argv`,
        // alive for the whole call.
        unsafe { core::slice::from_raw_parts(argv, argc as usize) }
    };
    // INVARIANT: the words are valid, writable and ours for this call.
    let mut args = Args {
        argv,
        suspended: false,
    };
    // INVARIANT: `ti` is valid and exclusively ours for this call.
    let mut ctr = Ctr {
        ti: nn_ti,
        _ti: PhantomData,
    };
    let result = T::new(&mut ctr, &args);
    for &i in T::SECRET_ARGS {
        args.wipe(i);
    }
    let result = result.and_then(|target| {
        Instance::new(target).map_err(|err| {
            pr_err!("cannot allocate the target's bio queue\n");
            CtrError::new(c"out of memory", err)
        })
    });
    if result.is_ok() && T::WORKER {
        // SAFETY: `ti` is valid and ours during the constructor;
        // device-mapper reads `per_io_data_size` afterwards.
        unsafe { (*ti).per_io_data_size = queue::per_bio_data_size::<Instance<T>>() };
    }
    match result {
        Ok(instance) => {
            // SAFETY: `ti` is valid; `private` is the target's to set.
            unsafe { (*ti).private = KBox::into_raw(instance).cast() };
            0
        }
        Err(e) => {
            // SAFETY: `ti` is valid; device-mapper reads `error` (a static
            // string) after we return.
            unsafe { (*ti).error = e.msg.as_char_ptr().cast_mut() };
            e.err.to_errno()
        }
    }
}

/// # Safety
///
/// `ti` must be a target constructed by `ctr_callback::<T>`, with no other
/// callback running or to come.
unsafe extern "C" fn dtr_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: `ti` is valid; `private` holds the `KBox<Instance<T>>` that
    // `ctr_callback` leaked, and nothing uses it after `dtr`.
    let instance = unsafe { KBox::from_raw((*ti).private.cast::<Instance<T>>()) };
    // The queue first (it drains into the still live target), then the
    // target itself.
    drop(instance);
    // SAFETY: `ti` is valid.
    unsafe { (*ti).private = core::ptr::null_mut() };
}

/// A target instance with its bio queues (`ti->private`).
///
/// # Invariants
///
/// `queues` is set exactly for a worker target, whose `per_io_data_size`
/// is then `queue::per_bio_data_size::<Self>()`; its ordered queue serves
/// into `target`, and `drop` stops and drains both queues before `target`
/// is dropped.
struct Instance<T: Target> {
    queues: Option<Queues<T>>,
    target: KBox<T>,
}

/// The two bio queues of a worker target (see `queue.rs`).
struct Queues<T: Target> {
    /// The ordered queue; its server holds the FIFO of deferred bios.
    ordered: Arc<Ordered<DmServe<T>>>,
    /// The parallel queue's workqueue (`<name>_rd`).
    parallel: WorkQueue,
}

/// The ordered queue's server of an [`Instance`]: pops its bio FIFO into
/// its target (`process`), background work through `idle`.
///
/// # Invariants
///
/// `target` is that of the instance whose `ordered` this is, alive as long
/// as that `Ordered` is in use (`Instance::drop`).
#[pin_data]
struct DmServe<T: Target> {
    #[pin]
    bios: OrderedBios<Instance<T>>,
    target: NonNull<T>,
}

// SAFETY: the FIFO is locked; `T: Target` is `Send + Sync` and only
// shared references to it are made.
unsafe impl<T: Target> Send for DmServe<T> {}
// SAFETY: as above.
unsafe impl<T: Target> Sync for DmServe<T> {}

impl<T: Target> DmServe<T> {
    fn target(&self) -> &T {
        // SAFETY: alive while the queue is in use (type invariant).
        unsafe { self.target.as_ref() }
    }
}

impl<T: Target> Serve for DmServe<T> {
    type Item = DeferredBio;

    fn pop(&self) -> Option<DeferredBio> {
        self.bios.pop()
    }

    fn serve(&self, bio: DeferredBio) {
        self.target().process(bio);
    }

    fn idle_step(&self) -> bool {
        self.target().idle()
    }
}

impl<T: Target> Instance<T> {
    fn new(target: KBox<T>) -> Result<KBox<Self>> {
        let mut instance = KBox::new(
            Self {
                queues: None,
                target,
            },
            GFP_KERNEL,
        )?;
        if T::WORKER {
            let parallel = queue::parallel_workqueue(T::NAME)?;
            // INVARIANT: serves into `target`; starts paused (no background
            // work before resume).
            let target = NonNull::from(&*instance.target);
            let server = pin_init!(DmServe {
                bios <- OrderedBios::new(),
                target,
            });
            let ordered = Ordered::new::<core::convert::Infallible, _>(T::NAME, server, true)?;
            instance.queues = Some(Queues { ordered, parallel });
        }
        Ok(instance)
    }
}

impl<T: Target> ServeParallel for Instance<T> {
    fn serve_parallel(&self, bio: DeferredBio) {
        if self.target.process_parallel(bio) {
            if let Some(queues) = &self.queues {
                // Background work was put off for this read (not while
                // paused).
                Ordered::kick_idle(queues.ordered.as_arc_borrow());
            }
        }
    }
}

impl<T: Target> Drop for Instance<T> {
    fn drop(&mut self) {
        if let Some(Queues { ordered, parallel }) = self.queues.take() {
            // No background work; the parallel bios (whose end may kick
            // it) drain first; then nothing queues the work item again.
            ordered.pause();
            parallel.flush();
            ordered.pause();
            // Every deferred bio was served (device-mapper drained I/O).
            kernel::warn_on!(!ordered.server.bios.is_empty());
            // The last reference: its workqueue is destroyed here; then the
            // parallel one (drained already).
            drop(ordered);
            drop(parallel);
        }
    }
}

/// # Safety
///
/// `ti` must be a live target constructed by `ctr_callback::<T>`.
unsafe fn instance_of<'a, T: Target>(ti: *mut dm_target) -> &'a Instance<T> {
    // SAFETY: the caller promises a live target; `private` holds its
    // `KBox<Instance<T>>`, which `dtr` frees only after all other callbacks
    // are done.
    unsafe { &*(*ti).private.cast::<Instance<T>>() }
}

/// # Safety
///
/// `ti` must be a live target constructed by `ctr_callback::<T>`.
unsafe fn target_of<'a, T: Target>(ti: *mut dm_target) -> &'a T {
    // SAFETY: the caller's promise.
    unsafe { &instance_of::<T>(ti).target }
}

/// # Safety
///
/// A `dm_map_fn` call: live target, valid bio lent for the call.
unsafe extern "C" fn map_callback<T: Target>(
    ti: *mut dm_target,
    bio: *mut kernel::bindings::bio,
) -> c_int {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    // SAFETY: device-mapper lends the bio for the call.
    let lent = unsafe { Bio::from_raw(bio) };
    let result = instance.target.map(lent);
    let (Some(queues), Some(bio)) = (&instance.queues, NonNull::new(bio)) else {
        return bindings::DM_MAPIO_KILL as c_int;
    };
    match result {
        MapResult::Deferred => {
            // SAFETY: a bio of this worker target, whose per-bio data is a
            // `PerBio<Instance<T>>` (`Instance` invariant); it is the
            // FIFO's once we return DM_MAPIO_SUBMITTED.
            unsafe { queues.ordered.server.bios.push(bio) };
            Ordered::kick(queues.ordered.as_arc_borrow());
            bindings::DM_MAPIO_SUBMITTED as c_int
        }
        MapResult::Parallel => {
            // SAFETY: as above; the instance outlives the parallel
            // workqueue's flush (`Instance::drop`).
            unsafe { queue::push_parallel(&queues.parallel, instance, bio) };
            bindings::DM_MAPIO_SUBMITTED as c_int
        }
        MapResult::Kill => bindings::DM_MAPIO_KILL as c_int,
    }
}

/// # Safety
///
/// A `dm_postsuspend_fn` call: live target.
unsafe extern "C" fn postsuspend_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    if let Some(Queues { ordered, parallel }) = &instance.queues {
        // Device-mapper has drained I/O: stop background work, then wait
        // for the parallel work items (whose end may kick the ordered one,
        // refused now) and for a running ordered one.
        ordered.pause();
        parallel.flush();
        ordered.pause();
    }
    instance.target.postsuspend();
}

/// # Safety
///
/// A `dm_resume_fn` call: live target.
unsafe extern "C" fn resume_callback<T: Target>(ti: *mut dm_target) {
    // SAFETY: live target (callback contract).
    let instance = unsafe { instance_of::<T>(ti) };
    if let Some(queues) = &instance.queues {
        Ordered::resume(queues.ordered.as_arc_borrow());
    }
}

/// # Safety
///
/// A `dm_message_fn` call: live target, `argv` with `argc` C strings,
/// `result` writable for `maxlen` bytes.
unsafe extern "C" fn message_callback<T: Target>(
    ti: *mut dm_target,
    argc: c_uint,
    argv: *mut *mut c_char,
    result: *mut c_char,
    maxlen: c_uint,
) -> c_int {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    let argv: &[*mut c_char] = if argv.is_null() || argc == 0 {
        &[]
    } else {
        // SAFETY: device-mapper passes `argc` valid pointers, alive for the
        // call.
        unsafe { core::slice::from_raw_parts(argv, argc as usize) }
    };
    // SAFETY: live target (callback contract).
    let suspended = unsafe { bindings::dm_suspended(ti) } != 0;
    // INVARIANT: valid, writable words, ours for this call.
    let args = Args { argv, suspended };
    let mut empty = [0u8; 1];
    let buf: &mut [u8] = if result.is_null() || maxlen == 0 {
        &mut empty
    } else {
        // SAFETY: device-mapper lends `maxlen` writable bytes at `result`.
        unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) }
    };
    match target.message(&args, &mut StatusWriter::new(buf)) {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(e) => e.to_errno(),
    }
}

/// # Safety
///
/// A `dm_io_hints_fn` call: live target, `limits` valid and ours.
unsafe extern "C" fn io_hints_callback<T: Target>(
    ti: *mut dm_target,
    limits: *mut kernel::bindings::queue_limits,
) {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    // SAFETY: device-mapper lends the limits for the call.
    if let Some(limits) = unsafe { limits.as_mut() } {
        target.io_hints(&mut Limits(limits));
    }
}

/// # Safety
///
/// A `dm_status_fn` call: live target, `result` writable for `maxlen` bytes.
unsafe extern "C" fn status_callback<T: Target>(
    ti: *mut dm_target,
    status_type: bindings::status_type_t,
    _status_flags: c_uint,
    result: *mut c_char,
    maxlen: c_uint,
) {
    if result.is_null() || maxlen == 0 {
        return;
    }
    let kind = match status_type {
        bindings::status_type_t_STATUSTYPE_INFO => StatusType::Info,
        bindings::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
        _ => StatusType::Ima,
    };
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    // SAFETY: device-mapper lends `maxlen` writable bytes at `result`.
    let buf = unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) };
    // A truncated line is reported to device-mapper by the full buffer
    // itself (it then retries with a larger one).
    let _ = target.status(kind, &mut StatusWriter::new(buf));
}

/// # Safety
///
/// A `dm_iterate_devices_fn` call: live target, `callout` and `data` from
/// device-mapper.
unsafe extern "C" fn iterate_devices_callback<T: Target>(
    ti: *mut dm_target,
    callout: bindings::iterate_devices_callout_fn,
    data: *mut c_void,
) -> c_int {
    // SAFETY: live target (callback contract).
    let target = unsafe { target_of::<T>(ti) };
    let mut devices = Devices {
        ti,
        callout,
        data,
        _p: PhantomData,
    };
    target.iterate_devices(&mut devices)
}
