//! The command line: clap's derive types and our usage-error policy.
//!
//! Must not: do I/O or load the configuration.
//! Fails: a usage error of `deliver` must defer (75), never clap's own exit
//! 2, which Postfix would bounce; `main.rs` maps [`ParseOutcome::Usage`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Postfix pipe(8) delivery for GitLab incoming email: no IMAP mailbox.
#[derive(Debug, Parser)]
#[command(name = "mailpipe", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deliver one message from stdin into the spool (run by Postfix).
    ///
    /// Exit status: 0 spooled or auto-reply dropped; 67 no valid GitLab key
    /// (5.1.1); 65 too large (5.3.4) or empty (5.6.0); 75 anything else
    /// (4.x.x), so Postfix keeps the message and retries.
    Deliver(EnvelopeArgs),
    /// Print, as JSON, the decision `deliver` would make; write nothing.
    Explain(EnvelopeArgs),
    /// Check the configuration, the spool and Postfix; run it after every
    /// change. Exit 0 when nothing is an error, 1 otherwise.
    Check(CheckArgs),
    /// Hand the spooled messages to GitLab's mail_room API (a daemon under
    /// systemd; `--once` for cron). Exit 1 when it cannot start, or when
    /// `--once` left a message deferred.
    Drain(DrainArgs),
    /// List the spool per route and state, the oldest message's age, and
    /// deferred and failed messages with their reasons (like `postqueue -p`).
    Queue(QueueArgs),
    /// Move failed messages back into the queue (like `postsuper -r`).
    Requeue(RequeueArgs),
    /// One-line health check for Nagios, Icinga or Zabbix: exit 0 OK, 1
    /// WARNING, 2 CRITICAL, 3 UNKNOWN, with performance data.
    ///
    /// CRITICAL: a route GitLab refuses (401/403), a full spool, the oldest
    /// message older than --critical-age. WARNING: older than
    /// --warning-age, failed messages, little free space.
    Health(HealthArgs),
}

/// Options of `mailpipe health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// WARNING when the oldest queued message is older than this.
    #[arg(short = 'w', long, value_name = "SECS", default_value_t = 900)]
    pub warning_age: u64,
    /// CRITICAL when the oldest queued message is older than this.
    #[arg(short = 'c', long, value_name = "SECS", default_value_t = 3600)]
    pub critical_age: u64,
    /// WARNING when less than this share of the spool's space or inodes
    /// is free.
    #[arg(long, value_name = "PERCENT", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub warning_free: u8,
    /// CRITICAL below this share (and always when fewer than two messages
    /// of limits.max_message_bytes fit).
    #[arg(long, value_name = "PERCENT", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub critical_free: u8,
}

/// Options of `mailpipe drain`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Try every waiting message once, then exit.
    #[arg(long)]
    pub once: bool,
    /// Try deferred messages now, ignoring their next-attempt time (like
    /// `postqueue -f`).
    #[arg(long)]
    pub flush: bool,
}

/// Options of `mailpipe queue`.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Options of `mailpipe requeue`.
#[derive(Debug, Clone, Args)]
pub struct RequeueArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Only this route (incoming_email or service_desk_email).
    #[arg(long, value_name = "ROUTE")]
    pub route: Option<String>,
    /// `ALL`, or messages as `mailpipe queue` lists them (route/name).
    #[arg(required = true, value_name = "MESSAGE")]
    pub names: Vec<String>,
}

/// The envelope, from Postfix's macros. Use the `--flag=value` form in
/// master.cf so an address starting with `-` stays an argument's value.
#[derive(Debug, Clone, Args)]
pub struct EnvelopeArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Envelope sender (`${sender}`); empty means the null sender.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    pub sender: Option<String>,
    /// Envelope recipient (`${recipient}`). Given twice, mailpipe defers:
    /// set the transport's destination_recipient_limit to 1.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    pub recipient: Vec<String>,
    /// Recipient as first received (`${original_recipient}`).
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    pub original_recipient: Vec<String>,
    /// Postfix queue id (`${queue_id}`), for logs and file names.
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub queue_id: Option<String>,
}

/// Options of `mailpipe check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Send a probe message through Postfix and report where it ended.
    #[arg(long)]
    pub send_test: bool,
    /// Check the Postfix instance in this configuration directory
    /// (`postconf -c DIR`).
    #[arg(long, value_name = "DIR")]
    pub postfix_config: Option<PathBuf>,
    /// The user Postfix runs mailpipe as, when master.cf does not say.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per check, for a person.
    Text,
    /// One JSON object, for monitoring.
    Json,
}

/// What parsing the command line gave.
#[derive(Debug)]
pub enum ParseOutcome {
    Run(Cli),
    /// `--help` or `--version`: print this and exit 0.
    Info(String),
    /// A usage error: defer with this text.
    Usage(String),
}

/// Parses `args` without letting clap exit the process.
pub fn parse<I, T>(args: I) -> ParseOutcome
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => ParseOutcome::Run(cli),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                ParseOutcome::Info(e.render().to_string())
            }
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("usage error").to_string();
                ParseOutcome::Usage(first.trim_start_matches("error: ").to_string())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyphen_addresses_stay_values() {
        let ParseOutcome::Run(cli) =
            parse(["mailpipe", "deliver", "--recipient=-oX@ex.com", "--sender="])
        else {
            panic!("should parse")
        };
        let Command::Deliver(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.recipient, ["-oX@ex.com"]);
        assert_eq!(a.sender.as_deref(), Some(""));
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        assert!(matches!(
            parse(["mailpipe", "deliver", "--bogus"]),
            ParseOutcome::Usage(_)
        ));
        assert!(matches!(
            parse(["mailpipe", "--version"]),
            ParseOutcome::Info(_)
        ));
    }
}
