//! The configuration files the repository ships load with exactly the code
//! every command uses (`Config::load_all`, which `deliver` reaches through
//! `Config::load`): `examples/mailpipe.toml` (the README's quick start) and
//! `packaging/mailpipe.toml` (installed as /etc/mailpipe/mailpipe.toml;
//! tests/packaging_config.rs checks its commented-out settings too). And the
//! README's quick-start `explain` prints the JSON the README shows.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mailpipe::config::{Config, Route};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(rel: &str) -> Config {
    Config::load_all(&root().join(rel)).unwrap_or_else(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{rel} does not load:\n{}", list.join("\n"))
    })
}

fn routes(config: &Config) -> Vec<Route> {
    config.routes.iter().map(|r| r.route).collect()
}

#[test]
fn the_example_config_loads_as_the_quick_start_uses_it() {
    let config = load("examples/mailpipe.toml");
    assert_eq!(
        routes(&config),
        [Route::IncomingEmail, Route::ServiceDeskEmail]
    );
    assert_eq!(config.gitlab_host, "gitlab.example.com");
    // The README's quick start lists /tmp/mailpipe-example/incoming_email/new/.
    assert_eq!(config.spool.dir, Path::new("/tmp/mailpipe-example"));
}

#[test]
fn the_packaged_config_loads() {
    let config = load("packaging/mailpipe.toml");
    assert!(routes(&config).contains(&Route::IncomingEmail));
    assert_eq!(config.spool.dir, Path::new("/var/spool/mailpipe"));
}

/// The `explain` command of README.md's quick start, run as written, prints
/// the JSON object the README shows after it.
#[test]
fn the_readme_quick_start_explain_prints_what_the_readme_shows() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let command = "mailpipe explain --config examples/mailpipe.toml \
                   --recipient=support@incoming.gitlab.example.com < examples/reply.eml";
    let after = readme
        .split(command)
        .nth(1)
        .unwrap_or_else(|| panic!("README.md no longer shows `{command}`"));
    let shown = after
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```json block after the explain command");
    let shown: serde_json::Value = serde_json::from_str(shown).unwrap();

    // The quick start creates the spool root first (explain checks it is
    // there); creating it is all this test writes.
    let config = load("examples/mailpipe.toml");
    fs::create_dir_all(&config.spool.dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .current_dir(root())
        .args([
            "explain",
            "--config",
            "examples/mailpipe.toml",
            "--recipient=support@incoming.gitlab.example.com",
        ])
        .env_remove("SENDER")
        .env_remove("RECIPIENT")
        .env_remove("ORIGINAL_RECIPIENT")
        .stdin(Stdio::from(
            fs::File::open(root().join("examples/reply.eml")).unwrap(),
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, shown);
}
