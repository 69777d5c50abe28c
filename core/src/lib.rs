//! MlsDisk core engine (placeholder; the layers land in their own modules).
#![no_std]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod selftest;
