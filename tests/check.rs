//! `mailpipe check` against a real Postfix configuration built from the
//! shipped snippets: the good setup passes (and its probe reaches the
//! spool), and each broken variant fails with its own message.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod postfix_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use postfix_support::{Instance, Variant};

const BIN: &str = env!("CARGO_BIN_EXE_mailpipe");

struct Checked {
    code: i32,
    text: String,
}

fn check(inst: &Instance, config: &Path, extra: &[&str]) -> Checked {
    let out = Command::new(BIN)
        .arg("check")
        .arg(format!("--config={}", config.display()))
        .arg(format!("--postfix-config={}", inst.conf.display()))
        .args(extra)
        .output()
        .unwrap();
    Checked {
        code: out.status.code().unwrap_or(-1),
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn errors(c: &Checked) -> Vec<&str> {
    c.text.lines().filter(|l| l.starts_with("error")).collect()
}

fn postconf(inst: &Instance, setting: &str) {
    let ok = Command::new("postconf")
        .arg("-c")
        .arg(&inst.conf)
        .arg("-e")
        .arg(setting)
        .status()
        .unwrap()
        .success();
    assert!(ok, "postconf -e {setting}");
}

/// Runs `f` on a broken setup and asserts check fails with `needle` in an
/// error (or warning) line; `undo` restores the setup.
fn expect_finding(
    inst: &Instance,
    level: &str,
    needle: &str,
    f: impl FnOnce(),
    undo: impl FnOnce(),
) {
    f();
    let c = check(inst, &inst.config_file, &[]);
    let hit = c
        .text
        .lines()
        .any(|l| l.starts_with(level) && l.contains(needle));
    assert!(hit, "expected a {level} line with {needle:?}:\n{}", c.text);
    if level == "error" {
        assert_eq!(c.code, 1, "{}", c.text);
    }
    undo();
    let c = check(inst, &inst.config_file, &[]);
    assert_eq!(c.code, 0, "restored setup passes:\n{}", c.text);
}

#[test]
fn shipped_setup_passes_and_the_probe_reaches_the_spool() {
    let inst = Instance::start(Variant::Subaddress);
    let c = check(&inst, &inst.config_file, &[]);
    assert_eq!(c.code, 0, "{}", c.text);
    assert!(errors(&c).is_empty(), "{}", c.text);
    assert!(c.text.contains("runs as user mailpipe"), "{}", c.text);
    assert!(
        c.text.contains("delivered by the mailpipe transport"),
        "{}",
        c.text
    );
    let json = Command::new(BIN)
        .args(["check", "--format=json"])
        .arg(format!("--config={}", inst.config_file.display()))
        .arg(format!("--postfix-config={}", inst.conf.display()))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["errors"], 0);
    assert!(v["findings"].as_array().unwrap().len() > 10);

    let c = check(&inst, &inst.config_file, &["--send-test"]);
    assert_eq!(c.code, 0, "{}", c.text);
    let probe = c.text.lines().find(|l| l.contains("probe")).unwrap_or("");
    assert!(
        probe.starts_with("ok") && probe.contains("spooled"),
        "{}",
        c.text
    );
    let left: usize = ["incoming_email"]
        .iter()
        .map(|r| fs::read_dir(inst.spool.join(r).join("new")).map_or(0, |d| d.count()))
        .sum();
    assert_eq!(left, 0, "the probe is removed once found");
}

#[test]
fn broken_postfix_settings_each_have_their_own_message() {
    let inst = Instance::start(Variant::Subaddress);
    let master = inst.conf.join("master.cf");
    let original_master = fs::read_to_string(&master).unwrap();
    let set_master = |from: &str, to: &str| {
        let text = original_master.replace(from, to);
        assert_ne!(text, original_master, "{from} is in master.cf");
        fs::write(&master, text).unwrap();
    };
    let restore_master = || fs::write(&master, &original_master).unwrap();

    expect_finding(
        &inst,
        "error",
        "mailpipe_destination_recipient_limit",
        || postconf(&inst, "mailpipe_destination_recipient_limit=2"),
        || postconf(&inst, "mailpipe_destination_recipient_limit=1"),
    );
    expect_finding(
        &inst,
        "error",
        "mailpipe_time_limit",
        || postconf(&inst, "mailpipe_time_limit=100s"),
        || postconf(&inst, "mailpipe_time_limit=600s"),
    );
    expect_finding(
        &inst,
        "error",
        "message_size_limit",
        || postconf(&inst, "message_size_limit=0"),
        || postconf(&inst, "message_size_limit=50000000"),
    );
    expect_finding(
        &inst,
        "warning",
        "recipient_delimiter",
        || postconf(&inst, "recipient_delimiter=-"),
        || postconf(&inst, "recipient_delimiter=+"),
    );
    expect_finding(
        &inst,
        "error",
        "not routed to mailpipe",
        || postconf(&inst, "transport_maps="),
        || {
            postconf(
                &inst,
                &format!(
                    "transport_maps=hash:{}/mailpipe_transport",
                    inst.conf.display()
                ),
            )
        },
    );
    expect_finding(
        &inst,
        "error",
        "Relay access denied",
        || postconf(&inst, "relay_domains="),
        || postconf(&inst, &format!("relay_domains={}", postfix_support::DOMAIN)),
    );
    expect_finding(
        &inst,
        "error",
        "case-sensitive",
        || set_master("flags=DRX", "flags=DRXu"),
        restore_master,
    );
    expect_finding(
        &inst,
        "error",
        "change the message bytes",
        || set_master("flags=DRX", "flags=DRX."),
        restore_master,
    );
    expect_finding(
        &inst,
        "warning",
        "lacks D",
        || set_master("flags=DRX", "flags=RX"),
        restore_master,
    );
    expect_finding(
        &inst,
        "error",
        "user=root",
        || set_master("user=mailpipe", "user=root"),
        restore_master,
    );
    expect_finding(
        &inst,
        "error",
        "${recipient}",
        || set_master("--recipient=${recipient}", ""),
        restore_master,
    );
    expect_finding(
        &inst,
        "error",
        "not ",
        || set_master("--config=", "--config=/etc/other/"),
        restore_master,
    );
}

#[test]
fn broken_configs_and_spools_each_have_their_own_message() {
    let inst = Instance::start(Variant::Subaddress);
    let original = fs::read_to_string(&inst.config_file).unwrap();
    let broken = inst.dir.join("etc/mailpipe/broken.toml");
    let cases: [(&str, String, &str); 5] = [
        (
            "unknown setting",
            format!("{original}\n[spool2]\nx = 1\n"),
            "unknown field",
        ),
        (
            "placeholder twice",
            original.replace("+%{key}@", "+%{key}+%{key}@"),
            "more than once",
        ),
        (
            "placeholder in domain",
            original.replace("+%{key}@incoming", "@%{key}.incoming"),
            "local part",
        ),
        (
            "overlap",
            format!(
                "{}\n[service_desk_email]\naddress = \"incoming+sd-%{{key}}@{}\"\n",
                original.replace("[service_desk_email]", "[unused_table]"),
                postfix_support::DOMAIN
            ),
            "",
        ),
        (
            "bad host",
            original.replace("host = \"", "host = \"https://"),
            "not a host name",
        ),
    ];
    for (what, text, needle) in cases {
        fs::write(&broken, text).unwrap();
        let c = check(&inst, &broken, &[]);
        assert_eq!(c.code, 1, "{what}: {}", c.text);
        assert!(
            errors(&c).iter().any(|l| l.contains(needle)),
            "{what}: {}",
            c.text
        );
    }
    // The spool: missing, world-writable, new/ a symlink.
    fs::write(
        &broken,
        original.replace(&inst.spool.display().to_string(), "/nonexistent/spool"),
    )
    .unwrap();
    let c = check(&inst, &broken, &[]);
    assert!(
        errors(&c).iter().any(|l| l.contains("is missing")),
        "{}",
        c.text
    );

    let mode = fs::metadata(&inst.spool).unwrap().permissions().mode();
    fs::set_permissions(&inst.spool, fs::Permissions::from_mode(0o777)).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert!(
        errors(&c).iter().any(|l| l.contains("world-writable")),
        "{}",
        c.text
    );
    fs::set_permissions(&inst.spool, fs::Permissions::from_mode(mode)).unwrap();

    let route = inst.spool.join("incoming_email");
    fs::create_dir_all(route.join("tmp")).unwrap();
    let _ = fs::remove_dir_all(route.join("new"));
    std::os::unix::fs::symlink("/tmp", route.join("new")).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert!(
        errors(&c).iter().any(|l| l.contains("symbolic link")),
        "{}",
        c.text
    );
    fs::remove_file(route.join("new")).unwrap();
    postfix_support::make_spool_layout(&inst.spool);

    // The trust boundary (src/layout.rs): the deliver account writes only
    // tmp/ and new/.
    let work = route.join("work");
    fs::set_permissions(&work, fs::Permissions::from_mode(0o2770)).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains("work is writable by mailpipe, who may write only tmp/ and new/")),
        "{}",
        c.text
    );
    fs::remove_dir(&work).unwrap();
    std::os::unix::fs::symlink("/root", &work).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains("work is a symbolic link")),
        "{}",
        c.text
    );
    fs::remove_file(&work).unwrap();
    let (mp_uid, mp_gid) = {
        let id = |f: &str| {
            let o = Command::new("id").args([f, "mailpipe"]).output().unwrap();
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        (id("-u"), id("-g"))
    };
    std::os::unix::fs::chown(&route, Some(mp_uid), Some(mp_gid)).unwrap();
    std::os::unix::fs::chown(&inst.spool, Some(mp_uid), Some(mp_gid)).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains("spool is writable by mailpipe")),
        "{}",
        c.text
    );
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains("incoming_email is writable by mailpipe")),
        "{}",
        c.text
    );
    postfix_support::make_spool_layout(&inst.spool);
    let c = check(&inst, &inst.config_file, &[]);
    assert_eq!(c.code, 0, "the packaged layout passes again: {}", c.text);

    // The drain's settings: GitLab's URL and a secret GitLab would accept.
    let good_secret = inst.dir.join("etc/mailpipe/good.secret");
    let bad_secret = inst.dir.join("etc/mailpipe/bad.secret");
    // base64 of 32 bytes, with the trailing newline `echo` leaves.
    fs::write(
        &good_secret,
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )
    .unwrap();
    fs::write(&bad_secret, "c2hvcnQ=\n").unwrap();
    let with_drain = |secret: &Path| {
        original
            .replace("[gitlab]\n", "[gitlab]\nurl = \"http://127.0.0.1:9\"\n")
            .replace(
                "[incoming_email]\n",
                &format!("[incoming_email]\nsecret_file = \"{}\"\n", secret.display()),
            )
            .replace(
                "[service_desk_email]\n",
                &format!(
                    "[service_desk_email]\nsecret_file = \"{}\"\n",
                    secret.display()
                ),
            )
    };
    fs::write(&inst.config_file, with_drain(&good_secret)).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    assert_eq!(c.code, 0, "{}", c.text);
    assert!(c.text.contains("32-byte base64 secret"), "{}", c.text);
    fs::write(&inst.config_file, with_drain(&bad_secret)).unwrap();
    let c = check(&inst, &inst.config_file, &[]);
    fs::write(&inst.config_file, &original).unwrap();
    assert_eq!(c.code, 1, "{}", c.text);
    assert!(
        errors(&c).iter().any(|l| l.contains("secret_file")),
        "{}",
        c.text
    );
    assert!(!c.text.contains("c2hvcnQ"), "never the secret: {}", c.text);

    // The security warning: the incoming domain is GitLab's own domain.
    let text = original.replace(
        "host = \"gitlab.example.com\"",
        "host = \"gitlab.incoming.gitlab.example.com\"",
    );
    fs::write(&broken, text).unwrap();
    let c = check(&inst, &broken, &[]);
    assert!(
        c.text
            .lines()
            .any(|l| l.starts_with("warning") && l.contains("parent of GitLab's host")),
        "{}",
        c.text
    );
}

#[test]
fn custom_service_desk_addresses_are_explained() {
    let inst = Instance::start(Variant::Subaddress);
    // The config master.cf names, so check does not flag a mismatch.
    let config = inst.config_file.clone();
    let original = fs::read_to_string(&config).unwrap();
    let mut text = original.clone();
    text.push_str("\n[service_desk_custom_email]\naddresses = [\"support@customer.example\"]\n");
    fs::write(&config, text).unwrap();
    let c = check(&inst, &config, &[]);
    assert_eq!(c.code, 0, "{}", c.text);
    let line = c
        .text
        .lines()
        .find(|l| l.contains("service_desk_custom_email"))
        .unwrap_or_else(|| panic!("no custom email line:\n{}", c.text));
    assert!(
        line.starts_with("ok")
            && line.contains("support@customer.example")
            && line.contains("+verify"),
        "{line}"
    );
    // A custom address that is also a GitLab mailbox address is refused.
    let mut text = original.clone();
    text.push_str(
        "\n[service_desk_custom_email]\naddresses = [\"incoming+x@incoming.gitlab.example.com\"]\n",
    );
    fs::write(&config, text).unwrap();
    let c = check(&inst, &config, &[]);
    assert_eq!(c.code, 1, "{}", c.text);
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains("service_desk_custom_email.addresses")),
        "{}",
        c.text
    );
    fs::write(&config, original).unwrap();
}
