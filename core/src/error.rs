//! The one error type of the engine.
//!
//! Every fallible operation of the core returns [`Result`]. An error carries a
//! kind (what a caller may act on) and a static message (what a log line or
//! `ti->error` shows). Nothing in the core panics on data that came from the
//! disk or from a caller.

use core::fmt;

/// What went wrong, as far as a caller can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backing device failed a read, write or flush.
    Io,
    /// Authenticated data did not verify: tampered, swapped, or replayed.
    Integrity,
    /// A trusted anchor says the disk is older than its last sync.
    Rollback,
    /// The key does not open this disk.
    WrongKey,
    /// The on-disk structure is malformed (bad magic, version, length).
    Corrupted,
    /// An argument is out of range or malformed.
    InvalidArgument,
    /// There is no space left for the request.
    NoSpace,
    /// The thing asked for does not exist.
    NotFound,
    /// A memory allocation failed.
    OutOfMemory,
    /// The operation is not supported by this build or this format version.
    Unsupported,
    /// The object is in a state that does not allow the operation.
    InvalidState,
    /// A concurrent transaction changed what this one changes: it cannot
    /// commit (abort it and retry).
    Conflict,
}

/// Where an error comes from, beyond its kind, for a caller that must tell
/// causes apart (the kernel module maps them to `ti->error`): data, never
/// matched on message text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Not classified further than the kind.
    #[default]
    Unspecified,
    /// The rollback anchor: its device or contents, or the disk image
    /// checked against it (older, forked, too far ahead).
    Anchor,
    /// The backing device is smaller than the disk on it (truncated).
    Truncated,
}

/// An error: a kind, a cause and a short static description.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    msg: &'static str,
    cause: Cause,
}

impl Error {
    /// An error of `kind` with a message naming the cause.
    pub const fn new(kind: ErrorKind, msg: &'static str) -> Self {
        Self {
            kind,
            msg,
            cause: Cause::Unspecified,
        }
    }

    /// The same error, classified as coming from `cause`.
    #[must_use]
    pub const fn with_cause(self, cause: Cause) -> Self {
        Self { cause, ..self }
    }

    /// Where the error comes from ([`Cause::Unspecified`] unless set).
    pub const fn cause(&self) -> Cause {
        self.cause
    }

    /// What kind of error this is.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message naming the cause.
    pub const fn msg(&self) -> &'static str {
        self.msg
    }

    /// A failed memory allocation.
    pub const fn oom() -> Self {
        Self::new(ErrorKind::OutOfMemory, "out of memory")
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.msg)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<alloc::collections::TryReserveError> for Error {
    fn from(_: alloc::collections::TryReserveError) -> Self {
        Self::oom()
    }
}

/// The result type of the engine.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns early with an error of the given kind and message.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $msg:expr) => {
        return Err($crate::Error::new($crate::ErrorKind::$kind, $msg))
    };
}

/// Returns early with an error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $kind:ident, $msg:expr) => {
        if !($cond) {
            $crate::bail!($kind, $msg);
        }
    };
}
