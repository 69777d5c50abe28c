//! Userspace tools on the MlsDisk core: devices for benchmarking (a file
//! with optional O_DIRECT, a device model that charges per I/O), the
//! encrypt-only baseline `CryptDisk`, and the benchmark workloads.

pub mod bench;
pub mod cryptdisk;
pub mod throttle;
