//! The report of `mailpipe check`: one finding per check (ok, warning or
//! error, the setting concerned, the fix), as text or JSON.
//!
//! Must not: decide anything; it only collects and renders.
//! Fails: never.

use std::fmt::Write as _;

use serde::Serialize;

/// How bad a finding is; any `Error` makes `check` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The area: config, security, spool, postfix, probe.
    pub check: &'static str,
    /// The setting, file or parameter concerned.
    pub subject: String,
    pub message: String,
    /// What to do; empty for `ok`.
    pub hint: String,
}

/// The report: findings in order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub config: String,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Adds one finding.
    pub fn add(
        &mut self,
        level: Level,
        check: &'static str,
        subject: &str,
        message: String,
        hint: &str,
    ) {
        match level {
            Level::Error => self.errors += 1,
            Level::Warning => self.warnings += 1,
            Level::Ok => {}
        }
        self.findings.push(Finding {
            level,
            check,
            subject: subject.to_string(),
            message,
            hint: hint.to_string(),
        });
    }

    pub(crate) fn ok(&mut self, check: &'static str, subject: &str, message: String) {
        self.add(Level::Ok, check, subject, message, "");
    }

    pub(crate) fn warn(&mut self, check: &'static str, subject: &str, message: String, hint: &str) {
        self.add(Level::Warning, check, subject, message, hint);
    }

    pub(crate) fn error(
        &mut self,
        check: &'static str,
        subject: &str,
        message: String,
        hint: &str,
    ) {
        self.add(Level::Error, check, subject, message, hint);
    }

    /// One line per check, for a person.
    pub fn to_text(&self) -> String {
        let mut out = format!("mailpipe check: {}\n", self.config);
        for f in &self.findings {
            let level = match f.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            let _ = writeln!(out, "{level:<8}{:<10}{}: {}", f.check, f.subject, f.message);
            if !f.hint.is_empty() {
                let _ = writeln!(out, "{:18}fix: {}", "", f.hint);
            }
        }
        let oks = self.findings.len() - self.errors - self.warnings;
        let _ = writeln!(
            out,
            "{oks} ok, {} warning(s), {} error(s)",
            self.warnings, self.errors
        );
        out
    }
}
