//! DEK record parsing: never panics, and what parses re-encodes to the same bytes.
#![no_main]

use cmek::DekRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = DekRecord::from_bytes(data) {
        assert_eq!(record.to_bytes(), data, "record did not round-trip");
    }
});
