//! The `mailpipe` binary: install the panic hook, parse the command line,
//! run the command, and turn its `Status` into the process exit code.
//!
//! Must not: contain logic, read configuration, or call `process::exit`
//! outside the panic hook.
//! Fails: never with a code other than 0, 65, 67 or 75 from `deliver`; a
//! panic is reported as 4.3.0 and exits 75 (see `status::install_panic_hook`).

use std::io::Write;
use std::process::ExitCode;

use mailpipe::cli::{self, Command, ParseOutcome};
use mailpipe::status::{self, Deferral, Status};
use mailpipe::{check, deliver, drain, health, spool};

fn main() -> ExitCode {
    status::install_panic_hook(spool::abandon_in_flight);
    // SIGXFSZ would kill us on RLIMIT_FSIZE; ignored, the write fails with
    // EFBIG and we defer like Dovecot does. SIGPIPE is already ignored by
    // Rust's runtime, so a closed stdout is an error, not a death.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };

    let status = match cli::parse(std::env::args_os()) {
        ParseOutcome::Info(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        ParseOutcome::Usage(text) => Status::Deferred(Deferral::Config, format!("usage: {text}")),
        ParseOutcome::Run(cli) => match cli.command {
            Command::Deliver(args) => deliver::deliver(&args),
            Command::Explain(args) => {
                deliver::explain(&args);
                return ExitCode::SUCCESS;
            }
            Command::Check(args) => return check::main(&args),
            Command::Drain(args) => {
                restrict_nss_when_static();
                return exit_code(drain::command(&args));
            }
            Command::Queue(args) => return exit_code(drain::queue::command(&args)),
            Command::Requeue(args) => return exit_code(drain::queue::requeue_command(&args)),
            Command::Health(args) => return ExitCode::from(health::command(&args)),
        },
    };
    status::report(&status);
    ExitCode::from(status.exit_code())
}

/// In a statically linked build, keeps glibc from loading NSS modules
/// (libnss_systemd, libnss_mdns, …) into the process, which crashes a
/// static binary: host names are looked up in /etc/hosts and DNS only,
/// through the sources built into libc. Dynamic builds follow the system's
/// nsswitch.conf unchanged.
fn restrict_nss_when_static() {
    #[cfg(target_feature = "crt-static")]
    {
        unsafe extern "C" {
            // glibc's <nss.h>.
            fn __nss_configure_lookup(db: *const libc::c_char, line: *const libc::c_char) -> i32;
        }
        // SAFETY: two NUL-terminated static strings; called before any
        // thread starts.
        unsafe {
            __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr());
        }
    }
}

/// The ordinary exit status of the admin commands (drain, queue, requeue):
/// they are not run by Postfix.
fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
