//! The drain's log: one line per attempt and per event, on stderr, in the
//! `name: key=value, …` style of Postfix's lines. Under systemd each line
//! starts with a sd-daemon(3) priority prefix (`<3>`, `<4>`, `<6>`), so
//! journald files a 401 as an error and `journalctl -p err` finds it.
//!
//! Must not: log message content, header values, the secret or a token.
//! Fails: silently; a closed stderr must not stop the drain.
//!
//! Why stderr and not syslog like `deliver`: the drain is a daemon under
//! systemd (or a cron job), not a child of Postfix, and both capture it.

use std::io::Write;

/// How bad a line is (syslog priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            Level::Info => "",
        }
    }
}

/// Where lines go.
#[derive(Debug, Clone, Copy)]
pub struct Journal {
    /// stderr is connected to journald: prefix priorities.
    prefixed: bool,
}

impl Journal {
    /// Looks at stderr once: systemd sets `JOURNAL_STREAM` to the device
    /// and inode of the stream it connected (systemd.exec(5)); only when
    /// stderr is that stream are prefixes used, so a terminal or a cron
    /// mail shows plain lines.
    pub fn new() -> Journal {
        let prefixed = std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|v| {
                let (dev, ino) = v.split_once(':')?;
                Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
            })
            .is_some_and(|(dev, ino)| {
                // SAFETY: fstat fills a zeroed struct; fd 2 may be closed,
                // which is an error return, not undefined behaviour.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                let ok = unsafe { libc::fstat(2, &mut st) } == 0;
                ok && st.st_dev == dev && st.st_ino == ino
            });
        Journal { prefixed }
    }

    /// Writes one line (newlines in `text` are already gone: every caller
    /// builds it from printable pieces).
    pub fn line(&self, level: Level, text: &str) {
        let line = if self.prefixed {
            format!("<{}>{}{text}\n", level.priority(), level.word())
        } else {
            format!("mailpipe drain: {}{text}\n", level.word())
        };
        // One write under the lock, so lines of parallel workers never mix.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
    }

    pub fn info(&self, text: &str) {
        self.line(Level::Info, text);
    }

    pub fn warn(&self, text: &str) {
        self.line(Level::Warning, text);
    }

    pub fn error(&self, text: &str) {
        self.line(Level::Error, text);
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new()
    }
}
