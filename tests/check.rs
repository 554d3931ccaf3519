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
    // Root's own (mailpipe-drain's in production): never the deliver account's.
    fs::set_permissions(&good_secret, fs::Permissions::from_mode(0o600)).unwrap();
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

fn chown(path: &Path, user: &str) {
    let ok = Command::new("chown")
        .arg(user)
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {user} {}", path.display());
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The deliver account (master.cf user=mailpipe) parses Internet mail: check
/// says so when it could change the config, or read or change a secret.
#[test]
fn what_the_deliver_account_can_reach_is_an_error() {
    let inst = Instance::start(Variant::Subaddress);
    let user = postfix_support::MAILPIPE_USER;
    let config = inst.config_file.clone();
    let etc = config.parent().unwrap().to_path_buf();
    let original = fs::read_to_string(&config).unwrap();

    let c = check(&inst, &config, &[]);
    assert_eq!(c.code, 0, "{}", c.text);
    assert!(
        c.text
            .contains(&format!("{user} can read it and cannot change it")),
        "{}",
        c.text
    );

    // The config: the deliver account's own, writable by all, in a folder
    // it can write; and one it cannot read at all.
    expect_finding(
        &inst,
        "error",
        &format!("writable by {user}, the account that parses Internet mail"),
        || chown(&config, user),
        || chown(&config, "root"),
    );
    expect_finding(
        &inst,
        "error",
        "writable by",
        || chmod(&config, 0o666),
        || chmod(&config, 0o644),
    );
    expect_finding(
        &inst,
        "error",
        &format!("folder {} is writable by {user}", etc.display()),
        || chmod(&etc, 0o777),
        || chmod(&etc, 0o755),
    );
    expect_finding(
        &inst,
        "error",
        &format!("folder {} is writable by {user}", etc.display()),
        || chown(&etc, user),
        || chown(&etc, "root"),
    );
    expect_finding(
        &inst,
        "error",
        &format!("not readable by {user}, who runs deliver"),
        || chmod(&config, 0o600),
        || chmod(&config, 0o644),
    );

    // A secret of root's (0600), in its own folder: no error. Then readable
    // by the deliver account (group, world, owner), writable by it, and its
    // folder writable by it.
    let secrets = inst.dir.join("etc/secrets");
    fs::create_dir_all(&secrets).unwrap();
    chmod(&secrets, 0o755);
    let secret = secrets.join("incoming_email.secret");
    fs::write(&secret, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    chmod(&secret, 0o600);
    fs::write(
        &config,
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
            ),
    )
    .unwrap();
    let c = check(&inst, &config, &[]);
    assert_eq!(c.code, 0, "{}", c.text);
    assert!(
        c.text
            .contains(&format!("(mode 0600) is out of {user}'s reach")),
        "{}",
        c.text
    );
    expect_finding(
        &inst,
        "error",
        "is world-readable (mode 0644)",
        || chmod(&secret, 0o644),
        || chmod(&secret, 0o600),
    );
    expect_finding(
        &inst,
        "error",
        &format!("is readable by {user}, the account that parses Internet mail"),
        || {
            chown(&secret, &format!("root:{user}"));
            chmod(&secret, 0o640);
        },
        || {
            chown(&secret, "root:root");
            chmod(&secret, 0o600);
        },
    );
    expect_finding(
        &inst,
        "error",
        &format!("is writable by {user}"),
        || chown(&secret, user),
        || chown(&secret, "root"),
    );
    expect_finding(
        &inst,
        "error",
        &format!("folder {} is writable by {user}", secrets.display()),
        || chmod(&secrets, 0o777),
        || chmod(&secrets, 0o755),
    );
    // A sticky folder (like /tmp) is fine while root owns the entry...
    chmod(&secrets, 0o1777);
    let c = check(&inst, &config, &[]);
    assert_eq!(c.code, 0, "sticky, root's secret: {}", c.text);
    // ...but not once the deliver account owns it.
    chown(&secret, user);
    let c = check(&inst, &config, &[]);
    chown(&secret, "root");
    chmod(&secrets, 0o755);
    assert!(
        errors(&c)
            .iter()
            .any(|l| l.contains(&format!("folder {} is writable", secrets.display()))),
        "sticky, the deliver account's file: {}",
        c.text
    );
    // ...and the secret's content never appears in any finding.
    assert!(!c.text.contains("MDEyMzQ1"), "{}", c.text);
    fs::write(&config, &original).unwrap();
}

#[test]
fn plain_http_to_another_host_and_smtputf8_off_are_warnings() {
    let inst = Instance::start(Variant::Subaddress);
    let config = inst.config_file.clone();
    let original = fs::read_to_string(&config).unwrap();
    let with_url =
        |url: &str| original.replace("[gitlab]\n", &format!("[gitlab]\nurl = \"{url}\"\n"));
    for url in [
        "http://127.0.0.1:8080",
        "http://[::1]:8080/gitlab",
        "http://localhost",
        "https://gitlab.example.com",
    ] {
        fs::write(&config, with_url(url)).unwrap();
        let c = check(&inst, &config, &[]);
        assert!(!c.text.contains("plain http"), "{url}: {}", c.text);
    }
    expect_finding(
        &inst,
        "warning",
        "is plain http to gitlab.example.com, not a loopback address",
        || fs::write(&config, with_url("http://gitlab.example.com")).unwrap(),
        || fs::write(&config, &original).unwrap(),
    );
    expect_finding(
        &inst,
        "warning",
        "http://user@10.0.0.1:80 is plain http to 10.0.0.1",
        || fs::write(&config, with_url("http://user@10.0.0.1:80/")).unwrap(),
        || fs::write(&config, &original).unwrap(),
    );

    // The shipped setup has SMTPUTF8 on (Postfix's default).
    let c = check(&inst, &config, &[]);
    assert!(
        c.text
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("smtputf8_enable")),
        "{}",
        c.text
    );
    expect_finding(
        &inst,
        "warning",
        "smtputf8_enable: no: Postfix does not offer SMTPUTF8",
        || postconf(&inst, "smtputf8_enable=no"),
        || postconf(&inst, "smtputf8_enable=yes"),
    );
    // What the warning says is what Postfix does: with smtputf8_enable=no,
    // EHLO does not offer SMTPUTF8 and MAIL FROM ... SMTPUTF8 is refused.
    let reload = |setting: &str| {
        postconf(&inst, setting);
        let ok = Command::new("postfix")
            .arg("-c")
            .arg(&inst.conf)
            .arg("reload")
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "postfix reload");
        // Wait until smtpd runs with the new setting.
        let want = setting.ends_with("yes");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let smtp = inst.smtp();
            let offers = smtp.ehlo.contains("SMTPUTF8");
            if offers == want {
                return smtp;
            }
            smtp.quit();
            assert!(
                std::time::Instant::now() < deadline,
                "smtpd kept its old setting"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let mut smtp = reload("smtputf8_enable=no");
    let r = smtp.cmd("MAIL FROM:<j\u{f6}rg@example.com> SMTPUTF8");
    assert!(r.starts_with("555 5.5.4"), "{r}");
    smtp.quit();
    let mut smtp = reload("smtputf8_enable=yes");
    let r = smtp.cmd("MAIL FROM:<j\u{f6}rg@example.com> SMTPUTF8");
    assert!(r.starts_with("250"), "{r}");
    smtp.quit();
}
