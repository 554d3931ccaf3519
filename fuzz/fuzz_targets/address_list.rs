//! Fuzz target `address_list`: one header value (or section) through the
//! address-list, Message-ID and Received readers and the header framer; the
//! properties are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailpipe_fuzz::check_address_list(data);
});
