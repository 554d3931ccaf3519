//! Fuzz target `policy_request`: a byte stream from a Postfix policy client
//! -> `mailpipe policy`'s parser, answer and reply; the property is
//! `check_policy_request` in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailpipe_fuzz::check_policy_request(data);
});
