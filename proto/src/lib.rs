//! The Witness gRPC protocol, generated from `proto/witness.proto`.
//!
//! Three services share one port: `Raft` (between witnesses only), `Witness`
//! (agents) and `Admin` (operators and `witnessctl`).

/// Generated messages and service stubs of package `witness.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("witness.v1");
}

/// The encoded file descriptor set, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("witness_descriptor");

pub use v1::*;

pub mod json;

/// UTC civil time of `unix_secs`: (year, month, day, hour, minute, second),
/// without a date library (Howard Hinnant's civil-from-days). Shared by
/// witnessctl's tables and the jepsen harness's run directories.
pub fn civil_utc(unix_secs: u64) -> (i64, u64, u64, u64, u64, u64) {
    let (days, rem) = (unix_secs / 86_400, unix_secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}
