//! Any header the parser accepts re-encodes to exactly the bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((used, again)) = cmek::internal::header_round_trip(data) {
        assert_eq!(&data[..used], &again[..], "header did not round-trip");
    }
    // Inspecting never panics either.
    let _ = cmek::inspect(data);
});
