//! mailpipe: Postfix's pipe(8) transport hands it each message for GitLab's
//! incoming-email address; it drops auto-replies, finds the GitLab key the
//! way GitLab does (envelope first), answers with a sysexits code Postfix
//! understands, and stores the message durably in a Maildir spool that a
//! drain hands to GitLab's mail_room API. No IMAP mailbox, no poller.
//!
//! Layout, top to bottom (dependencies point downward):
//! - `main.rs`: process set-up ([`runtime`]), panic hook, parse, run, exit code;
//! - commands: [`deliver`] (deliver, explain), [`check`] (its steps in
//!   `check/`: setup, postfix, trust, spool, the `--send-test` probe),
//!   [`drain`] (drain, queue, requeue), [`health`] (the monitoring
//!   plugin), [`policy`] (the Postfix policy service that refuses at RCPT
//!   TO what deliver would bounce);
//! - I/O: [`config`], [`spool`] and [`layout`] (the spool's layout and its
//!   trust boundary), [`privilege`], [`log`], [`postfix`];
//! - pure: [`decide`], [`gitlab`] (GitLab's key rules: templates and keys,
//!   handler kinds, lookup order and the receiver simulation), [`headers`],
//!   [`status`].
//!
//! Trust split: `deliver` reads hostile mail and holds no secret; the drain
//! holds GitLab's secret and never parses mail. They share only the spool.
//!
//! Exit codes (see [`status`]): 0 spooled or auto-reply dropped; 67 no valid
//! key (5.1.1); 65 too large (5.3.4) or empty (5.6.0); 75 everything else.

pub mod check;
pub mod cli;
pub mod config;
pub mod decide;
pub mod deliver;
pub mod drain;
pub mod gitlab;
pub mod headers;
pub mod health;
pub mod layout;
pub mod log;
pub mod policy;
pub mod postfix;
pub mod privilege;

pub mod random;
pub mod runtime;
pub mod spool;

pub mod status;
