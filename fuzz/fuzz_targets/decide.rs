//! Fuzz target `decide`: envelope + header bytes -> `mailpipe::decide::decide`
//! under three fixed configurations; the properties are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailpipe_fuzz::check_decide(data);
});
