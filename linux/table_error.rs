// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! Why a table line was refused ([`TableError`]), and [`Escaped`], the
//! printable form of argument bytes used in its messages. Part of
//! [`super`] (the table line parser).

use core::fmt;

use super::{ANCHOR_MAX, CACHE_MIB_MAX, CACHE_MIB_MIN};

/// Why a table line was refused.
///
/// `Display` gives the detailed reason (for the kernel log, without any key
/// material); [`TableError::summary`] gives a fixed message for `ti->error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableError<'a> {
    /// Fewer than the two required arguments.
    MissingArguments {
        /// How many arguments were given.
        given: usize,
    },
    /// The key is neither hex nor a keyring reference.
    MalformedKey(&'static str),
    /// A hex key of a length AES does not take.
    KeyLength {
        /// Number of hex digits given.
        digits: usize,
    },
    /// A well-formed keyring reference of a type other than `logon`/`user`.
    KeyringNotSupported,
    /// `<#opts>` is not a decimal number.
    BadOptionCount(&'a [u8]),
    /// `<#opts>` does not match the number of option arguments.
    OptionCountMismatch {
        /// The count the table line declares.
        declared: usize,
        /// The option arguments actually present.
        given: usize,
    },
    /// An option outside the known set.
    UnknownOption(&'a [u8]),
    /// The same option twice.
    DuplicateOption(&'a [u8]),
    /// Two of `create`, `force_create` and `open` together.
    ConflictingOptions,
    /// `anchor=` with an empty, overlong or unprintable value.
    BadAnchor,
    /// `anchor=` of a kind other than `none` and `dev:<device>`.
    UnknownAnchor(&'a [u8]),
    /// `cache_mib=` not a number in range.
    BadCacheSize(&'a [u8]),
}

impl TableError<'_> {
    /// A fixed message for `ti->error` (device-mapper prints it after the
    /// constructor returns, so it must not borrow from the arguments; it
    /// prefixes the target name itself).
    pub(crate) fn summary(&self) -> &'static core::ffi::CStr {
        match self {
            Self::MissingArguments { .. } => {
                c"not enough arguments (<backing device> <key> [<#opts> <opt>...])"
            }
            Self::MalformedKey(_) => c"malformed key (expected 32 or 64 hex digits)",
            Self::KeyLength { .. } => c"bad key length (expected 32 or 64 hex digits)",
            Self::KeyringNotSupported => c"only 'logon' and 'user' keyring keys are supported",
            Self::BadOptionCount(_) => c"<#opts> is not a number",
            Self::OptionCountMismatch { .. } => {
                c"<#opts> does not match the number of optional arguments"
            }
            Self::UnknownOption(_) => c"unknown option",
            Self::DuplicateOption(_) => c"option given twice",
            Self::ConflictingOptions => c"options 'create', 'force_create' and 'open' conflict",
            Self::BadAnchor => c"bad anchor specification",
            Self::UnknownAnchor(_) => c"unknown anchor (expected 'none' or 'dev:<device>')",
            Self::BadCacheSize(_) => c"bad cache_mib (expected a number of MiB, 4 to 16384)",
        }
    }
}

/// Bytes shown with non-printable characters escaped (`\xNN`).
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                fmt::Write::write_char(f, char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for TableError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MissingArguments { given } => write!(
                f,
                "not enough arguments: got {given}, need <backing device> <key> [<#opts> <opt>...]"
            ),
            Self::MalformedKey(why) => write!(f, "malformed key: {why}"),
            Self::KeyLength { digits } => write!(
                f,
                "bad key length: {digits} hex digits, expected 32 (AES-128) or 64 (AES-256)"
            ),
            Self::KeyringNotSupported => f.write_str(
                "only 'logon' and 'user' keyring keys (:<size>:logon:<description>) are supported, not 'encrypted' or 'trusted'",
            ),
            Self::BadOptionCount(s) => {
                write!(f, "<#opts> '{}' is not a number", Escaped(s))
            }
            Self::OptionCountMismatch { declared, given } => write!(
                f,
                "<#opts> is {declared} but {given} optional argument(s) follow"
            ),
            Self::UnknownOption(s) => write!(f, "unknown option '{}'", Escaped(s)),
            Self::DuplicateOption(s) => write!(f, "option '{}' given twice", Escaped(s)),
            Self::ConflictingOptions => {
                f.write_str("options 'create', 'force_create' and 'open' conflict")
            }
            Self::BadAnchor => write!(
                f,
                "bad anchor: 'anchor=<spec>' needs 1 to {ANCHOR_MAX} printable characters"
            ),
            Self::UnknownAnchor(s) => write!(
                f,
                "unknown anchor '{}': expected 'none' or 'dev:<device>' (a path or major:minor)",
                Escaped(s)
            ),
            Self::BadCacheSize(s) => write!(
                f,
                "bad cache_mib '{}': expected a number of MiB from {CACHE_MIB_MIN} to {CACHE_MIB_MAX}",
                Escaped(s)
            ),
        }
    }
}
