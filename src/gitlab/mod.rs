//! GitLab's incoming-email rules, in one place: the address templates and
//! the key alphabet ([`address`]), the handler each key shape is for
//! ([`kind`]), and where GitLab looks for the key, in its order, together
//! with the simulation of GitLab's own receiver that decides whether the
//! stored copy needs a `Delivered-To` line ([`lookup`]). `deliver`,
//! `explain` and `mailpipe policy` all decide through these (via
//! `crate::decide`), so they cannot disagree.
//!
//! Must not: touch files, the network or the clock; every function is pure.
//! Fails: never; an address, key or header that breaks a rule is simply not
//! a match.
//!
//! The reference is GitLab's own code: `gems/gitlab-email_handler/`
//! (`reply_key.rb`, `mail_key.rb`, `matchers/*.rb`, `custom_email.rb`),
//! `lib/gitlab/email/receiver.rb`, `lib/gitlab/email/handler/*.rb` and
//! `app/models/sent_notification.rb`; each rule cites its file.

pub mod address;
pub mod kind;
pub mod lookup;
