//! The files the packages install, checked without building a package:
//!
//! - `packaging/mailpipe.toml`, installed as /etc/mailpipe/mailpipe.toml,
//!   loads with exactly the code `deliver` uses; with every commented-out
//!   `# name = value` line switched on it still loads, and the values shown
//!   are the real defaults; every `[limits]` and `[drain]` setting is shown.
//! - the .deb and the .rpm (Cargo.toml's `[package.metadata.deb]` and
//!   `[package.metadata.generate-rpm]`) install the same files;
//! - `packaging/tmpfiles.d/mailpipe.conf`, which both packages apply,
//!   creates the example's spool (the layout of src/layout.rs, owner
//!   mailpipe) and the account's home;
//! - the .rpm's `%pre` carries `packaging/sysusers.d/mailpipe.conf` verbatim;
//! - the maintainer scripts are valid `sh`.
//!
//! `scripts/package-test` checks the built packages themselves.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mailpipe::config::{Config, DrainConfig, Limits, PolicyConfig, Route};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const EXAMPLE: &str = "packaging/mailpipe.toml";

fn load(text: &str) -> Config {
    Config::from_text(Path::new(EXAMPLE), text).unwrap_or_else(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{EXAMPLE} does not load:\n{}", list.join("\n"))
    })
}

/// The example with every `# name = value` and `# [table]` line switched on.
fn uncommented(text: &str) -> String {
    let setting = regex_lite::Regex::new(r"^# ([a-z_]+ = .*|\[[a-z_]+\])$").unwrap();
    text.lines()
        .map(|line| match setting.captures(line) {
            Some(c) => c[1].to_string(),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Field names of a struct, from its `Debug` text (`Name { a: 1, b: 2 }`).
fn field_names(debug: &str) -> Vec<String> {
    let field = regex_lite::Regex::new(r"[{,] ([a-z_]+): ").unwrap();
    field
        .captures_iter(debug)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn example_config_loads_as_installed() {
    let config = load(&read(EXAMPLE));
    assert!(config.route(Route::IncomingEmail).is_some());
    // Service Desk is off as installed, so the drain starts with only the
    // reply address's secret (it wants one per configured route).
    assert!(config.route(Route::ServiceDeskEmail).is_none());
    assert_eq!(config.spool.dir, Path::new("/var/spool/mailpipe"));
    assert_eq!(config.gitlab_host, "gitlab.example.com");
    // Secrets and the URL are the admin's to add; the example sets none.
    assert!(config.routes.iter().all(|r| r.secret_file.is_none()));
    assert!(config.gitlab_url.is_none());
}

#[test]
fn example_config_shows_real_defaults() {
    let text = read(EXAMPLE);
    let on = uncommented(&text);
    assert_ne!(on, text, "no commented-out setting found");
    let config = load(&on);
    assert_eq!(
        format!("{:?}", config.limits),
        format!("{:?}", Limits::default()),
        "a [limits] value in {EXAMPLE} is not the default"
    );
    // The metrics settings are off by default; the example shows values.
    let shown = DrainConfig {
        metrics_listen: Some("127.0.0.1:9853".into()),
        metrics_textfile: Some("/var/lib/prometheus/node-exporter/mailpipe.prom".into()),
        ..DrainConfig::default()
    };
    assert_eq!(
        format!("{:?}", config.drain),
        format!("{shown:?}"),
        "a [drain] value in {EXAMPLE} is not the default"
    );
    assert_eq!(
        format!("{:?}", config.policy),
        format!("{:?}", PolicyConfig::default()),
        "a [policy] value in {EXAMPLE} is not the default"
    );
    assert!(config.route(Route::ServiceDeskEmail).is_some());
    assert!(config.routes.iter().all(|r| r.secret_file.is_some()));
    assert_eq!(
        config.gitlab_url.as_deref(),
        Some("https://gitlab.example.com")
    );
}

#[test]
fn example_config_shows_every_limit_and_drain_setting() {
    let text = read(EXAMPLE);
    let debug = format!(
        "{:?} {:?} {:?}",
        Limits::default(),
        DrainConfig::default(),
        PolicyConfig::default()
    );
    let names = field_names(&debug);
    assert!(names.len() > 5, "{debug}");
    for name in names {
        assert!(
            text.contains(&format!("\n# {name} = ")),
            "{EXAMPLE} does not show the setting {name}"
        );
    }
}

/// `[package.metadata.<tool>]` of Cargo.toml.
fn metadata(tool: &str) -> toml::Table {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    manifest["package"]["metadata"][tool]
        .as_table()
        .unwrap_or_else(|| panic!("Cargo.toml has no [package.metadata.{tool}]"))
        .clone()
}

/// Normalised destination of one asset: absolute, a `*` source keeps its
/// glob, a man page as installed (compressed), zsh's folder named neutrally
/// (Debian: vendor-completions, Fedora: site-functions).
fn destination(source: &str, dest: &str) -> String {
    let mut dest = format!("/{}", dest.trim_start_matches('/'));
    if dest.ends_with('/') {
        dest.push_str(source.rsplit('/').next().unwrap());
    }
    if dest.starts_with("/usr/share/man/") && !dest.ends_with(".gz") {
        dest.push_str(".gz");
    }
    dest.replace("/zsh/vendor-completions/", "/zsh/<completions>/")
        .replace("/zsh/site-functions/", "/zsh/<completions>/")
}

#[test]
fn deb_and_rpm_install_the_same_files() {
    let deb = metadata("deb");
    let mut deb_files = BTreeSet::new();
    for asset in deb["assets"].as_array().unwrap() {
        let a = asset
            .as_array()
            .expect("deb assets as [source, dest, mode]");
        let (source, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        assert!(
            root().join(source).exists() || source.contains('*') || source.starts_with("target/"),
            "deb asset {source} is missing"
        );
        deb_files.insert(destination(source, dest));
    }
    // cargo-deb adds the systemd unit itself (systemd-units).
    let units = deb["systemd-units"].as_table().expect("systemd-units");
    let unit = format!("{}.service", units["unit-name"].as_str().unwrap());
    deb_files.insert(format!("/usr/lib/systemd/system/{unit}"));

    let rpm = metadata("generate-rpm");
    let mut rpm_files = BTreeSet::new();
    for asset in rpm["assets"].as_array().unwrap() {
        let a = asset.as_table().unwrap();
        if a.get("dir").and_then(toml::Value::as_bool) == Some(true) {
            continue;
        }
        let (source, dest) = (a["source"].as_str().unwrap(), a["dest"].as_str().unwrap());
        rpm_files.insert(destination(source, dest));
    }
    assert_eq!(
        deb_files, rpm_files,
        "the .deb and the .rpm install different files"
    );
}

#[test]
fn tmpfiles_create_the_spool_of_the_example() {
    // tmpfiles.d: d PATH MODE USER GROUP AGE
    let mut dirs = BTreeMap::new();
    for line in read("packaging/tmpfiles.d/mailpipe.conf").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"d") {
            assert_eq!(f.len(), 6, "{line}");
            assert_eq!(f[5], "-", "{line}: nothing in the spool may be aged out");
            dirs.insert(
                f[1].to_string(),
                (f[2].to_string(), f[3].to_string(), f[4].to_string()),
            );
        }
    }
    let config = load(&read(EXAMPLE));
    let spool = config.spool.dir.to_str().unwrap().to_string();
    // The trust boundary of src/layout.rs: the drain's account owns it all;
    // the deliver account (group mailpipe) writes only tmp/ and new/.
    let owner = |mode: u32| {
        (
            format!("{mode:04o}"),
            "mailpipe-drain".to_string(),
            "mailpipe".to_string(),
        )
    };
    assert_eq!(
        dirs.get(&spool),
        Some(&owner(mailpipe::layout::DRAIN_DIR_MODE)),
        "{spool}"
    );
    for route in &config.routes {
        let dir = format!("{spool}/{}", route.route);
        assert_eq!(
            dirs.get(&dir),
            Some(&owner(mailpipe::layout::DRAIN_DIR_MODE)),
            "{dir}"
        );
        for folder in mailpipe::layout::Folder::ALL {
            let path = format!("{dir}/{}", folder.as_str());
            assert_eq!(dirs.get(&path), Some(&owner(folder.mode())), "{path}");
        }
    }
    // The account's home (sysusers.d) exists too.
    let home = read("packaging/sysusers.d/mailpipe.conf")
        .lines()
        .find(|l| l.starts_with("u ") && l.split_whitespace().nth(1) == Some("mailpipe"))
        .and_then(|l| l.split('"').nth(2))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .expect("sysusers.d/mailpipe.conf has the user mailpipe");
    assert!(dirs.contains_key(&home), "home {home} is not created");
}

#[test]
fn rpm_pre_carries_the_sysusers_file() {
    let sysusers = read("packaging/sysusers.d/mailpipe.conf");
    let pre = read("packaging/rpm/pre.sh");
    let embedded = pre
        .split_once("<<'SYSUSERS'\n")
        .and_then(|(_, rest)| rest.split_once("\nSYSUSERS\n"))
        .map(|(body, _)| format!("{body}\n"))
        .expect("packaging/rpm/pre.sh has a <<'SYSUSERS' here-document");
    assert_eq!(
        embedded, sysusers,
        "packaging/rpm/pre.sh must carry packaging/sysusers.d/mailpipe.conf verbatim"
    );
}

#[test]
fn maintainer_scripts_are_valid_sh() {
    let scripts = [
        "packaging/debian/postinst",
        "packaging/debian/postrm",
        "packaging/rpm/pre.sh",
        "packaging/rpm/post.sh",
        "packaging/rpm/preun.sh",
        "packaging/rpm/postun.sh",
    ];
    for script in scripts {
        let out = Command::new("sh")
            .arg("-n")
            .arg(root().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for script in &scripts[..2] {
        assert!(
            read(script).contains("\n#DEBHELPER#\n"),
            "{script} lacks #DEBHELPER#"
        );
    }
}

#[test]
fn debian_changelog_names_this_version() {
    let changelog = read("packaging/debian/changelog");
    let first = changelog.lines().next().unwrap_or_default();
    let revision = metadata("deb")
        .get("revision")
        .and_then(toml::Value::as_str)
        .unwrap_or("1")
        .to_string();
    let expected = format!("mailpipe ({}-{revision}) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&expected),
        "packaging/debian/changelog starts with {first:?}, not {expected:?}...: add an entry \
         for the new version (dch -v {}-{revision})",
        env!("CARGO_PKG_VERSION")
    );
}
