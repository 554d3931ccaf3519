//! The `mailpipe` binary: install the panic hook, parse the command line,
//! run the command, and turn its outcome into the process exit code
//! (`deliver`: a `Status`; every other command: an `AdminOutcome`; both
//! mapped by `status.rs`).
//!
//! Must not: contain logic, read configuration, or call `process::exit`
//! outside the panic hook.
//! Fails: never with a code other than 0, 65, 67 or 75 from `deliver`; a
//! panic is reported as 4.3.0 and exits 75 (see `status::install_panic_hook`).
//! The admin commands exit 0, 1, 64 (usage) or 70 (a panic).

use std::io::Write;
use std::process::ExitCode;

use mailpipe::cli::{self, Command, ParseOutcome};
use mailpipe::status::{self, AdminOutcome, Deferral, Status};
use mailpipe::{check, deliver, drain, health, policy, spool};

fn main() -> ExitCode {
    status::install_panic_hook(spool::abandon_in_flight);
    // SIGXFSZ would kill us on RLIMIT_FSIZE; ignored, the write fails with
    // EFBIG and we defer like Dovecot does. SIGPIPE is already ignored by
    // Rust's runtime, so a closed stdout is an error, not a death.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };

    let command = match cli::parse(std::env::args_os()) {
        ParseOutcome::Info(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
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
fn postfix(status: Status) -> ExitCode {
    status::report(&status);
    ExitCode::from(status.exit_code())
}

/// Runs an admin command, which never speaks Postfix's protocol: a panic is
/// reported on stderr, a usage error too, and the exit status is sysexits'.
fn admin(run: impl FnOnce() -> AdminOutcome) -> ExitCode {
    status::install_admin_panic_hook();
    let outcome = run();
    status::report_admin(&outcome);
    ExitCode::from(outcome.exit_code())
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
