//! The process set-up `main.rs` does itself, in place of Rust's runtime
//! start-up (`std::rt::lang_start`), which `#![no_main]` skips.
//!
//! Why: Postfix starts mailpipe once per message. Rust's start-up asks
//! glibc for the main thread's stack bounds (`pthread_getattr_np`, which
//! reads and `sscanf`s /proc/self/maps) to arm a stack-overflow handler on
//! an alternate signal stack: a tenth of a 4 KB delivery's instructions and
//! nine of its system calls (callgrind and strace, bench/RESULTS.md). The
//! things it does that mailpipe relies on are done here instead: the
//! standard descriptors are made valid, SIGPIPE is ignored, and the
//! arguments are taken from `main`'s own `argc`/`argv`. A stack overflow
//! now ends in a plain SIGSEGV instead of std's message and SIGABRT, in
//! every thread (the drain's and the policy service's too: systemd logs
//! the signal); for `deliver` either way pipe(8) sees a signal and defers
//! the message ("Command died with signal", `pipe_command.c`), and no code
//! path in mailpipe recurses without a bound.
//!
//! Must not: allocate (but for the argument list), or touch anything but
//! descriptors 0–2 and signal dispositions; it runs before anything else.
//! Fails: [`start`] returns an error only when a closed standard descriptor
//! cannot be replaced by /dev/null; `main.rs` then exits 75 (EX_TEMPFAIL,
//! so Postfix keeps the message) without writing anything.

/// /dev/null could not be opened for a closed standard descriptor.
#[derive(Debug)]
pub struct StartError;

/// Makes descriptors 0, 1 and 2 valid, then sets the signal dispositions
/// every command needs.
///
/// A closed stdout is dangerous, not just unhelpful: the next `open` would
/// get descriptor 1, and `deliver`'s status line would be written into the
/// message it is storing. So a closed one is reopened on /dev/null, as
/// Rust's runtime does (`sanitize_standard_fds` in std's `sys/pal/unix`).
///
/// SIGPIPE is ignored so a reader that went away (Postfix, a `| head`) is
/// an `EPIPE` error, not a death. SIGXFSZ is ignored so a write beyond
/// RLIMIT_FSIZE fails with `EFBIG` and `deliver` defers, as Dovecot does.
pub fn start() -> Result<(), StartError> {
    open_standard_descriptors()?;
    // SAFETY: setting two signal dispositions to SIG_IGN; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    Ok(())
}

/// The command line as `main` received it. Not `std::env::args_os`: that
/// is filled by Rust's runtime start-up, which `#![no_main]` skips, and
/// works without it only on glibc (a hook in `.init_array`); a musl build
/// would see no arguments, and every message would defer as "no command".
///
/// # Safety
/// `argc` and `argv` must be the values the C runtime passed to `main`:
/// `argc` valid NUL-terminated strings, in memory that lives as long as the
/// process.
pub unsafe fn arguments(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let count = usize::try_from(argc).unwrap_or(0);
    (0..count)
        .map(|i| {
            // SAFETY: i < argc, and each argv[i] is a C string (caller's
            // contract); the bytes are copied, never assumed UTF-8.
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(arg.to_bytes()).to_os_string()
        })
        .collect()
}

fn open_standard_descriptors() -> Result<(), StartError> {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd, and the timeout is
    // zero: poll(2) only reports which descriptors are closed (POLLNVAL).
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    for entry in &fds {
        let closed = if polled < 0 {
            // poll(2) itself failed (EINVAL under some sandboxes, ENOMEM):
            // ask each descriptor, as std does.
            // SAFETY: F_GETFD reads a descriptor's flags and changes nothing.
            unsafe { libc::fcntl(entry.fd, libc::F_GETFD) == -1 }
        } else {
            entry.revents & libc::POLLNVAL != 0
        };
        // open(2) returns the lowest free descriptor: this one, since the
        // lower ones are open by now.
        // SAFETY: a NUL-terminated static path; the descriptor is kept for
        // the life of the process on purpose.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != entry.fd {
            return Err(StartError);
        }
    }
    Ok(())
}
