//! The `mailpipe` binary: set the process up, install the panic hook, parse
//! the command line, run the command, and turn its outcome into the process
//! exit code (`deliver`: a `Status`; every other command: an
//! `AdminOutcome`; both mapped by `status.rs`).
//!
//! `#![no_main]`: glibc calls [`main`] directly, without Rust's runtime
//! start-up, which cost a tenth of every delivery; `runtime.rs` says what
//! it did and does the part mailpipe needs.
//!
//! Must not: contain logic, read configuration, or call `process::exit`
//! outside the panic hook.
//! Fails: never with a code other than 0, 65, 67 or 75 from `deliver`; a
//! panic is reported as 4.3.0 and exits 75 (see `status::install_panic_hook`).
//! The admin commands exit 0, 1, 64 (usage) or 70 (a panic).
// The test harness brings its own `main` (`cargo test --all-targets`
// builds this file too, with no tests in it).
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

use std::io::Write;

use mailpipe::cli::{self, Command, ParseOutcome};
use mailpipe::status::{self, AdminOutcome, Deferral, Status};
use mailpipe::{check, deliver, drain, health, policy, runtime, spool};

/// The process entry (C's `main`, called by glibc's start-up code).
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    if runtime::start().is_err() {
        // Standard descriptors closed and /dev/null unopenable: nothing
        // can be said, and exit 75 makes Postfix keep the message.
        return libc::c_int::from(Status::Deferred(Deferral::Internal, String::new()).exit_code());
    }
    // SAFETY: argc and argv are exactly what the C runtime passed to main.
    let args = unsafe { runtime::arguments(argc, argv) };
    let code = run(args);
    // Rust's runtime would flush stdout after `main`; without it, do it.
    let _ = std::io::stdout().flush();
    libc::c_int::from(code)
}

fn run(args: Vec<std::ffi::OsString>) -> u8 {
    status::install_panic_hook(spool::abandon_in_flight);

    let command = match cli::parse(args) {
        ParseOutcome::Info(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return 0;
        }
        ParseOutcome::Usage(text) => {
            return postfix(Status::Deferred(Deferral::Config, format!("usage: {text}")));
        }
        ParseOutcome::AdminUsage(text) => return admin(|| AdminOutcome::Usage(text)),
        ParseOutcome::PluginUsage(text) => return admin(|| AdminOutcome::PluginUsage(text)),
        ParseOutcome::Run(cli) => cli.command,
    };
    match command {
        Command::Deliver(args) => postfix(deliver::deliver(&args.config, &args.envelope())),
        Command::Explain(args) => admin(|| deliver::explain(&args.config, &args.envelope())),
        Command::Check(args) => admin(|| check::main(&args.options(), args.format)),
        Command::Drain(args) => admin(|| {
            restrict_nss_when_static();
            drain::command(&args.config, args.options())
        }),
        Command::Queue(args) => admin(|| drain::queue::command(&args.config, args.format)),
        Command::Requeue(args) => admin(|| {
            drain::queue::requeue_command(&args.config, args.route.as_deref(), &args.names)
        }),
        Command::Policy(args) => admin(|| run_policy(&args)),
        Command::Health(args) => {
            admin(|| AdminOutcome::Plugin(health::command(&args.config, args.thresholds())))
        }
    }
}

/// Ends `deliver`: the one line for Postfix, then its exit code.
fn postfix(status: Status) -> u8 {
    status::report(&status);
    status.exit_code()
}

/// Runs an admin command, which never speaks Postfix's protocol: a panic is
/// reported on stderr, a usage error too, and the exit status is sysexits'.
fn admin(run: impl FnOnce() -> AdminOutcome) -> u8 {
    status::install_admin_panic_hook();
    let outcome = run();
    status::report_admin(&outcome);
    outcome.exit_code()
}

/// `mailpipe policy`: parse --listen, then serve until killed.
fn run_policy(args: &cli::PolicyArgs) -> AdminOutcome {
    let listen = match args.listen.as_deref().map(policy::Listen::parse) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => return AdminOutcome::Usage(format!("mailpipe policy: --listen={e}")),
    };
    let served = policy::command(&policy::Options {
        config: args.config.clone(),
        listen,
    });
    if served {
        AdminOutcome::Ok
    } else {
        AdminOutcome::Failed
    }
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
