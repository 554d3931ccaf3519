//! `mailpipe check`: every reason incoming email would not work, at once,
//! each with the setting concerned and the fix. It loads the configuration
//! through exactly the code `deliver` uses, so the two cannot disagree.
//!
//! Must not: change anything (no mkdir, no chmod, no Postfix reload); the
//! only write is `--send-test`'s probe message, submitted through Postfix.
//! Fails: never; a check that cannot run is itself a finding.
//!
//! The steps, one file each: [`setup`] (addresses, GitLab's security advice,
//! the drain's URL and secrets), [`postfix`] (the pipe service, routing,
//! limits, logging), [`trust`] (what the deliver account could change or
//! read), [`spool`] (the layout on disk, as the spool's owner), [`probe`]
//! (`--send-test`); [`report`] collects the findings.

use std::path::PathBuf;

use crate::config::Config;
use crate::postfix::Postfix;

pub mod postfix;
pub mod probe;
pub mod report;
pub mod setup;
pub mod spool;
pub mod trust;

pub use postfix::parse_duration;
pub use report::{Finding, Level, Report};

use postfix::{check_logging, check_postfix, check_smtputf8};
use setup::{check_addresses, check_drain, check_gitlab_url, check_security};
use spool::check_spool;
use trust::check_trust;

/// Options of `mailpipe check`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// `postconf -c DIR`: check that Postfix instance instead of the default.
    pub postfix_config: Option<PathBuf>,
    /// The user Postfix runs mailpipe as, when master.cf cannot tell.
    pub user: Option<String>,
    /// Submit a probe message through Postfix and watch where it ends.
    pub send_test: bool,
}

/// Runs `mailpipe check` and prints the report; `Failed` (exit 1) on any
/// error.
pub fn main(options: &Options, format: crate::cli::Format) -> crate::status::AdminOutcome {
    use std::io::Write;
    let report = run(options);
    let text = match format {
        crate::cli::Format::Text => report.to_text(),
        crate::cli::Format::Json => {
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    crate::status::AdminOutcome::from_success(report.errors == 0)
}

/// Runs every check.
pub fn run(options: &Options) -> Report {
    let mut report = Report {
        config: options.config.display().to_string(),
        ..Report::default()
    };
    let config = match Config::load_all(&options.config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                let subject = p.key.clone().unwrap_or_else(|| match p.line {
                    Some(l) => format!("{}:{l}", p.path.display()),
                    None => p.path.display().to_string(),
                });
                report.error("config", &subject, p.message.clone(), &p.hint);
            }
            return report;
        }
    };
    let names: Vec<&str> = config.routes.iter().map(|r| r.route.as_str()).collect();
    report.ok(
        "config",
        &options.config.display().to_string(),
        format!("loaded; routes {}", names.join(", ")),
    );
    check_addresses(&config, &mut report);

    let postfix = Postfix::new(options.postfix_config.as_deref());
    let service = check_postfix(&config, options, &postfix, &mut report);
    check_security(&config, &postfix, &mut report);
    if postfix.param("mail_version").is_ok() {
        crate::policy::wiring::check(&config, &postfix, &mut report);
    }
    let user = service
        .as_ref()
        .and_then(|s| s.user.clone())
        .or_else(|| options.user.clone())
        .unwrap_or_else(|| "mailpipe".to_string());
    // Looked up once (two id(1) runs) for the spool and trust steps.
    let account = trust::Account::lookup(&user);
    check_spool(&config, &user, account.as_ref(), &mut report);
    check_drain(&config, &mut report);
    check_trust(&config, &options.config, account.as_ref(), &mut report);
    check_gitlab_url(&config, &mut report);
    check_smtputf8(&postfix, &mut report);
    check_logging(&postfix, &mut report);
    if options.send_test {
        probe::send(&config, &postfix, &mut report);
    }
    report
}
