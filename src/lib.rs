//! mailpipe: Postfix's pipe(8) transport hands it each message for GitLab's
//! incoming-email address; it drops auto-replies, finds the GitLab key the
//! way GitLab does (envelope first), answers with a sysexits code Postfix
//! understands, and stores the message durably in a Maildir spool that a
//! drain hands to GitLab's mail_room API. No IMAP mailbox, no poller.
//!
//! Layout, top to bottom (dependencies point downward):
//! - `main.rs`: panic hook, parse, run, exit code;
//! - commands: [`deliver`] (deliver, explain), [`check`] (with [`probe`]),
//!   [`drain`] (drain, queue, requeue), [`health`];
//! - I/O: [`config`], [`spool`], [`log`], [`postfix`];
//! - pure: [`decide`], [`lookup`], [`headers`], [`address`], [`kind`],
//!   [`status`].
//!
//! Trust split: `deliver` reads hostile mail and holds no secret; the drain
//! holds GitLab's secret and never parses mail. They share only the spool.
//!
//! Exit codes (see [`status`]): 0 spooled or auto-reply dropped; 67 no valid
//! key (5.1.1); 65 too large (5.3.4) or empty (5.6.0); 75 everything else.

pub mod address;
pub mod check;
pub mod cli;
pub mod config;
pub mod decide;
pub mod deliver;
pub mod drain;
pub mod headers;
pub mod health;
pub mod kind;
pub mod log;
pub mod lookup;
pub mod postfix;
pub mod probe;
pub mod random;
pub mod spool;
pub mod status;
