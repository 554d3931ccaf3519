//! The command line: clap's derive types and our usage-error policy.
//!
//! Must not: do I/O or load the configuration.
//! Fails: a usage error of `deliver` must defer (75), never clap's own exit
//! 2, which Postfix would bounce; `main.rs` maps [`ParseOutcome::Usage`].
//! A usage error of any other command is [`ParseOutcome::AdminUsage`]
//! (exit 64, text on stderr): those are run by people, not by Postfix. When
//! the command cannot be told (none, or a misspelt one), it is `Usage`, so a
//! typo in master.cf still defers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PATH;
use crate::gitlab::lookup::Envelope;

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
    /// Postfix policy service (check_policy_service): refuse at RCPT TO what
    /// deliver would bounce (550 5.1.1, 552 5.3.4) and rate-limit mail loops
    /// (450 4.7.1); any failure answers DUNNO. A daemon: systemd's
    /// mailpipe-policy.socket, or --listen. Exit 1 when it cannot listen.
    Policy(PolicyArgs),
    /// One-line health check for Nagios, Icinga or Zabbix: exit 0 OK, 1
    /// WARNING, 2 CRITICAL, 3 UNKNOWN, with performance data.
    ///
    /// CRITICAL: a route GitLab refuses (401/403), a full spool, the oldest
    /// message older than --critical-age. WARNING: older than
    /// --warning-age, failed messages, little free space.
    Health(HealthArgs),
}

/// Options of `mailpipe policy`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Configuration file (re-read when it changes).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Listen on `unix:PATH` or `inet:127.0.0.1:PORT` (loopback only)
    /// instead of the socket systemd passes.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
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
/// The values are read as bytes and converted lossily (invalid bytes become U+FFFD): an
/// address that is not UTF-8 is still an address, never a usage error
/// (which would defer the message until Postfix gives up and bounces it).
#[derive(Debug, Clone, Args)]
pub struct EnvelopeArgs {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Envelope sender (`${sender}`); empty means the null sender.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true, value_parser = lossy())]
    pub sender: Option<String>,
    /// Envelope recipient (`${recipient}`). Given twice, mailpipe defers:
    /// set the transport's destination_recipient_limit to 1.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true, value_parser = lossy())]
    pub recipient: Vec<String>,
    /// Recipient as first received (`${original_recipient}`).
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true, value_parser = lossy())]
    pub original_recipient: Vec<String>,
    /// Postfix queue id (`${queue_id}`), for logs and file names.
    #[arg(long, value_name = "ID", allow_hyphen_values = true, value_parser = lossy())]
    pub queue_id: Option<String>,
}

impl EnvelopeArgs {
    /// Builds the envelope from the flags, or from local(8)'s environment
    /// (SENDER, RECIPIENT, ORIGINAL_RECIPIENT) when no envelope flag is given,
    /// as under aliases, `.forward` or procmail.
    pub fn envelope(&self) -> Envelope {
        let flags_given = self.sender.is_some()
            || !self.recipient.is_empty()
            || !self.original_recipient.is_empty();
        if flags_given {
            return Envelope {
                sender: self.sender.clone(),
                recipients: self.recipient.clone(),
                original_recipients: self.original_recipient.clone(),
                queue_id: self.queue_id.clone(),
            };
        }
        // Bytes, converted lossily like the flags: `std::env::var` would drop
        // a variable that is not UTF-8 and lose the recipient.
        let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Envelope {
            sender: var("SENDER"),
            recipients: var("RECIPIENT")
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect(),
            original_recipients: var("ORIGINAL_RECIPIENT")
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect(),
            queue_id: self.queue_id.clone(),
        }
    }
}

impl CheckArgs {
    /// What `check` runs with.
    pub fn options(&self) -> crate::check::Options {
        crate::check::Options {
            config: self.config.clone(),
            postfix_config: self.postfix_config.clone(),
            user: self.user.clone(),
            send_test: self.send_test,
        }
    }
}

impl DrainArgs {
    /// How `drain` runs.
    pub fn options(&self) -> crate::drain::Options {
        crate::drain::Options {
            once: self.once,
            flush: self.flush,
        }
    }
}

impl HealthArgs {
    /// The thresholds `health` judges with.
    pub fn thresholds(&self) -> crate::health::Thresholds {
        crate::health::Thresholds::new(
            self.warning_age,
            self.critical_age,
            self.warning_free,
            self.critical_free,
        )
    }
}

/// An argument as bytes, made UTF-8 lossily: invalid bytes become U+FFFD
/// (which the log prints as `?` and no key alphabet accepts).
fn lossy() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(|s| s.to_string_lossy().into_owned())
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
    /// A usage error of `deliver` (or of an unknown command): defer with
    /// this one line.
    Usage(String),
    /// A usage error of an admin command: clap's full text, for stderr.
    AdminUsage(String),
    /// A usage error of `mailpipe health`: a monitoring plugin answers
    /// UNKNOWN (3) to bad arguments (Nagios plugin guidelines).
    PluginUsage(String),
}

/// Parses `args` without letting clap exit the process.
pub fn parse<I, T>(args: I) -> ParseOutcome
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    if let Some(cli) = parse_deliver(&args) {
        return ParseOutcome::Run(cli);
    }
    match Cli::try_parse_from(&args) {
        Ok(cli) => ParseOutcome::Run(cli),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ParseOutcome::Info(e.render().to_string())
            }
            // No command at all: exit 0 would tell Postfix (argv= without
            // `deliver`) that the message was delivered, and lose it.
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                if !is_admin_command(args.get(1)) =>
            {
                ParseOutcome::Usage("no command given (see mailpipe --help)".into())
            }
            _ if args.get(1).is_some_and(|a| a == "health") => {
                ParseOutcome::PluginUsage(e.render().to_string())
            }
            _ if is_admin_command(args.get(1)) => ParseOutcome::AdminUsage(e.render().to_string()),
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("usage error").to_string();
                ParseOutcome::Usage(first.trim_start_matches("error: ").to_string())
            }
        },
    }
}

/// `deliver` alone, by a command tree that holds only its flags. Postfix
/// starts mailpipe once per message, and building clap's tree of every
/// command (and dropping it) was a fifth of a 4 KB delivery's instructions
/// (callgrind, bench/RESULTS.md). Only a success is taken from here: help,
/// a misspelt flag or any other error gives `None`, and [`parse`] parses
/// again with the whole tree, so every text and outcome stays the one
/// `Cli` gives (the test `deliver_fast_path_agrees_with_the_whole_tree`).
fn parse_deliver(args: &[std::ffi::OsString]) -> Option<Cli> {
    use clap::FromArgMatches;
    if args.get(1).is_none_or(|word| word != "deliver") {
        return None;
    }
    let deliver = EnvelopeArgs::augment_args(clap::Command::new("deliver"));
    let matches = deliver.try_get_matches_from(&args[1..]).ok()?;
    let envelope = EnvelopeArgs::from_arg_matches(&matches).ok()?;
    Some(Cli {
        command: Command::Deliver(envelope),
    })
}

/// True when `word` (the first argument) names a command other than
/// `deliver`: every subcommand clap knows, so a new one is included.
fn is_admin_command(word: Option<&std::ffi::OsString>) -> bool {
    use clap::CommandFactory;
    let Some(word) = word.and_then(|w| w.to_str()) else {
        return false;
    };
    word != "deliver"
        && Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == word || c.get_all_aliases().any(|a| a == word))
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
    fn envelope_bytes_that_are_not_utf8_are_still_values() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let arg = |prefix: &str, bad: &[u8]| {
            let mut v = prefix.as_bytes().to_vec();
            v.extend_from_slice(bad);
            OsString::from_vec(v)
        };
        let args = [
            OsString::from("mailpipe"),
            OsString::from("deliver"),
            arg("--sender=j", b"\xf6\xff@ex.com"),
            arg("--recipient=incoming+k@ex.com", b""),
            arg("--original-recipient=-", b"\xc3"),
            arg("--queue-id=4X", b"\x80Y"),
        ];
        let ParseOutcome::Run(cli) = parse(args) else {
            panic!("non-UTF-8 bytes must not be a usage error")
        };
        let Command::Deliver(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.sender.as_deref(), Some("j\u{fffd}\u{fffd}@ex.com"));
        assert_eq!(a.original_recipient, ["-\u{fffd}"]);
        assert_eq!(a.queue_id.as_deref(), Some("4X\u{fffd}Y"));
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

    #[test]
    fn only_deliver_and_unknown_commands_defer_on_usage_errors() {
        for admin in ["check", "explain", "queue", "requeue", "drain"] {
            assert!(
                matches!(
                    parse(["mailpipe", admin, "--bogus"]),
                    ParseOutcome::AdminUsage(_)
                ),
                "{admin}"
            );
        }
        // A misspelt command, or none but a bad flag: Postfix may be the
        // caller, so defer.
        for postfix in [
            &["mailpipe", "delivr"][..],
            &["mailpipe", "--bogus"],
            &["mailpipe"],
        ] {
            assert!(
                matches!(parse(postfix.iter().copied()), ParseOutcome::Usage(_)),
                "{postfix:?}"
            );
        }
    }

    #[test]
    fn deliver_fast_path_agrees_with_the_whole_tree() {
        let whole = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(Cli {
                command: Command::Deliver(a),
            }) => Some(format!("{a:?}")),
            _ => None,
        };
        let cases: &[&[&str]] = &[
            &["mailpipe", "deliver"],
            &["mailpipe", "deliver", "--recipient=a@b", "--sender="],
            &[
                "mailpipe",
                "deliver",
                "--recipient",
                "-a@b",
                "--sender",
                "-",
            ],
            &["mailpipe", "deliver", "--config=/x", "--queue-id=Q1"],
            &["mailpipe", "deliver", "--recipient=a", "--recipient=b"],
            &[
                "mailpipe",
                "deliver",
                "--original-recipient=o",
                "--recipient=r",
            ],
            &["mailpipe", "deliver", "--config"],
            &["mailpipe", "deliver", "--help"],
            &["mailpipe", "deliver", "-h"],
            &["mailpipe", "deliver", "--version"],
            &["mailpipe", "deliver", "--bogus"],
            &["mailpipe", "deliver", "stray"],
            &["mailpipe", "deliver", "--sender=a", "--sender=b"],
            &["mailpipe", "deliver", "--recip=a"],
            &["mailpipe", "deliver", "--", "--recipient=a"],
            &["mailpipe", "explain", "--recipient=a"],
        ];
        for args in cases {
            let os: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let fast = parse_deliver(&os).map(|cli| match cli.command {
                Command::Deliver(a) => format!("{a:?}"),
                other => panic!("fast path gave {other:?}"),
            });
            if let Some(fast) = fast {
                assert_eq!(Some(fast), whole(args), "{args:?}");
            }
            // Whatever the fast path declines, `parse` still answers as
            // the whole tree does.
            let outcome = format!("{:?}", parse(args.iter().copied()));
            let expected = match Cli::try_parse_from(*args) {
                Ok(cli) => format!("{:?}", ParseOutcome::Run(cli)),
                Err(_) => outcome.clone(),
            };
            assert_eq!(outcome, expected, "{args:?}");
        }
        // The usual Postfix line takes the fast path.
        let postfix = [
            "mailpipe",
            "deliver",
            "--sender=s@x",
            "--recipient=r@y",
            "--queue-id=Q",
        ];
        let os: Vec<std::ffi::OsString> = postfix.iter().map(Into::into).collect();
        assert!(parse_deliver(&os).is_some());
    }
}
