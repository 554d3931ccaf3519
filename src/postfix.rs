//! What Postfix's own configuration says about mailpipe, read through
//! `postconf` (never by parsing main.cf or master.cf ourselves).
//!
//! Must not: change Postfix's configuration, or guess where `postconf`
//! answers.
//! Fails: `PostfixError::Missing` when `postconf` is not installed (the
//! caller then skips the Postfix checks), `PostfixError::Failed` when it
//! runs but refuses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub enum PostfixError {
    Missing,
    Failed(String),
}

impl fmt::Display for PostfixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostfixError::Missing => write!(f, "postconf not found"),
            PostfixError::Failed(e) => write!(f, "postconf failed: {e}"),
        }
    }
}

/// A handle on one Postfix instance (the default one, or `-c DIR`).
pub struct Postfix {
    config_dir: Option<PathBuf>,
}

/// A master.cf service that runs the pipe(8) delivery agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeService {
    pub name: String,
    pub flags: String,
    pub user: Option<String>,
    pub argv: Vec<String>,
    /// `-o name=value` overrides on the service line.
    pub overrides: Vec<(String, String)>,
}

impl PipeService {
    /// True when the service runs `mailpipe deliver`.
    pub fn runs_mailpipe(&self) -> bool {
        self.argv.first().is_some_and(|a| a.ends_with("mailpipe"))
            && self.argv.iter().any(|a| a == "deliver")
    }

    /// The `--config` path the service passes, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        let mut args = self.argv.iter();
        while let Some(a) = args.next() {
            if let Some(p) = a.strip_prefix("--config=") {
                return Some(PathBuf::from(p));
            }
            if a == "--config" {
                return args.next().map(PathBuf::from);
            }
        }
        None
    }
}

impl Postfix {
    pub fn new(config_dir: Option<&Path>) -> Postfix {
        Postfix {
            config_dir: config_dir.map(Path::to_path_buf),
        }
    }

    /// The `-c DIR` this handle was made with.
    pub fn config_dir(&self) -> Option<&Path> {
        self.config_dir.as_deref()
    }

    fn postconf(&self, args: &[&str]) -> Result<String, PostfixError> {
        let mut cmd = Command::new("postconf");
        if let Some(dir) = &self.config_dir {
            cmd.arg("-c").arg(dir);
        }
        let out = cmd.args(args).output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PostfixError::Missing,
            _ => PostfixError::Failed(e.to_string()),
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(PostfixError::Failed(
                err.lines().next().unwrap_or("").to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of a main.cf parameter, with `$name` expanded (`postconf -xh`).
    pub fn param(&self, name: &str) -> Result<String, PostfixError> {
        Ok(self.postconf(&["-xh", name])?.trim().to_string())
    }

    /// Every master.cf service that runs pipe(8).
    pub fn pipe_services(&self) -> Result<Vec<PipeService>, PostfixError> {
        let text = self.postconf(&["-M"])?;
        Ok(text.lines().filter_map(parse_service).collect())
    }

    /// The transport `transport_maps` gives for `domain`, via `postmap -q`.
    pub fn transport_for(&self, domain: &str) -> Result<Option<String>, PostfixError> {
        let maps = self.param("transport_maps")?;
        for map in maps.split([',', ' ', '\t']).filter(|m| !m.is_empty()) {
            if let Some(value) = self.query(map, domain)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Looks `key` up in the lookup table `table` (like `hash:/etc/…`) with
    /// `postmap -q`, as this instance would.
    pub fn query(&self, table: &str, key: &str) -> Result<Option<String>, PostfixError> {
        let out = Command::new("postmap")
            .args(
                self.config_dir
                    .iter()
                    .flat_map(|d| [Path::new("-c"), d.as_path()]),
            )
            .args(["-q", key, table])
            .output()
            .map_err(|e| PostfixError::Failed(e.to_string()))?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

/// Parses one line of `postconf -M`: eight columns, the command and its
/// arguments last; pipe(8)'s `flags=`, `user=` and `argv=` (which takes
/// the rest of the line) are among the arguments.
fn parse_service(line: &str) -> Option<PipeService> {
    let words = split_args(line);
    if words.len() < 8 || words[7] != "pipe" {
        return None;
    }
    let mut service = PipeService {
        name: words[0].clone(),
        flags: String::new(),
        user: None,
        argv: Vec::new(),
        overrides: Vec::new(),
    };
    let mut rest = words[8..].iter();
    while let Some(w) = rest.next() {
        if w == "-o" {
            if let Some((k, v)) = rest.next().and_then(|kv| kv.split_once('=')) {
                service.overrides.push((k.to_string(), v.to_string()));
            }
        } else if let Some(f) = w.strip_prefix("flags=") {
            service.flags = f.to_string();
        } else if let Some(u) = w.strip_prefix("user=") {
            service.user = Some(u.split(':').next().unwrap_or(u).to_string());
        } else if let Some(first) = w.strip_prefix("argv=") {
            service.argv.push(first.to_string());
            service.argv.extend(rest.by_ref().cloned());
        }
    }
    Some(service)
}

/// Splits on white space, keeping Postfix 3.0's `{ … }` groups whole.
fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '{' {
            chars.next();
            // Braces nest, so `{ --sender=${sender} }` is one argument.
            let mut depth = 1;
            for c in chars.by_ref() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                word.push(c);
            }
            out.push(word.trim().to_string());
            continue;
        }
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            word.push(c);
            chars.next();
        }
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pipe_service_line() {
        let line = "mailpipe   unix  -       n       n       -       -       pipe \
                    flags=DRX user=mailpipe null_sender= argv=/usr/bin/mailpipe deliver \
                    --config=/etc/mailpipe/mailpipe.toml --recipient=${recipient}";
        let s = parse_service(line).unwrap();
        assert_eq!(s.name, "mailpipe");
        assert_eq!(s.flags, "DRX");
        assert_eq!(s.user.as_deref(), Some("mailpipe"));
        assert!(s.runs_mailpipe());
        assert_eq!(
            s.config_path(),
            Some(PathBuf::from("/etc/mailpipe/mailpipe.toml"))
        );
        assert_eq!(s.argv.last().unwrap(), "--recipient=${recipient}");
        assert!(parse_service("smtp inet n - y - - smtpd").is_none());
        let braces =
            "x unix - n n - - pipe user=a:b argv=/bin/mailpipe deliver { --sender=${sender} }";
        let s = parse_service(braces).unwrap();
        assert_eq!(s.user.as_deref(), Some("a"));
        assert_eq!(s.argv.last().unwrap(), "--sender=${sender}");
    }
}
