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
use mailpipe::{check, deliver, drain, spool};

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
            Command::Drain(args) => return exit_code(drain::command(&args)),
            Command::Queue(args) => return exit_code(drain::queue::command(&args)),
            Command::Requeue(args) => return exit_code(drain::queue::requeue_command(&args)),
        },
    };
    status::report(&status);
    ExitCode::from(status.exit_code())
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
