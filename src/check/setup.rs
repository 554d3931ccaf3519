//! `mailpipe check`'s configuration steps on the GitLab side: the
//! addresses and their `%{key}`, GitLab's security advice on the incoming
//! domain, and what the drain needs (GitLab's URL, the secret files).
//!
//! Must not: print a secret, or contact GitLab.
//! Fails: never; every problem is a finding.

use super::Report;
use crate::config::Config;
use crate::postfix::Postfix;

pub(super) fn check_addresses(config: &Config, report: &mut Report) {
    for r in &config.routes {
        let subject = format!("{}.address", r.route);
        if r.template.has_key() {
            report.ok(
                "config",
                &subject,
                format!("{} has %{{key}} in the local part", r.template.address),
            );
        } else {
            report.warn(
                "config",
                &subject,
                format!("{} has no %{{key}}: only replies can be routed (key from References)", r.template.address),
                "add %{key} (sub-addressing \"incoming+%{key}@…\") for new issues, merge requests and Service Desk",
            );
        }
    }
    // Custom Service Desk email (issue 14): say what the list does.
    for c in &config.custom_email.addresses {
        report.ok(
            "config",
            "service_desk_custom_email",
            format!(
                "{c}: mail without a key whose To names {c} (or its +verify) is stored for {}, \
                 and GitLab finds the project from its custom email setting; replies to \
                 <base>+<reply key>@ go to incoming_email",
                config.custom_email_route()
            ),
        );
    }
}

/// The configured incoming domains, lower case, each once.
pub(super) fn incoming_domains(config: &Config) -> Vec<String> {
    let mut domains: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.template.domain().to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// The Slack-verification exploit (GitLab's "Security concerns"): anyone
/// who can get a mail to a project's address can confirm an account that
/// trusts "has a mailbox at our domain".
pub(super) fn check_security(config: &Config, postfix: &Postfix, report: &mut Report) {
    let host = config.gitlab_host.to_ascii_lowercase();
    let mydomain = postfix
        .param("mydomain")
        .ok()
        .map(|d| d.to_ascii_lowercase());
    let domains = incoming_domains(config);
    let hint = "receive GitLab mail on its own subdomain (incoming.gitlab.example.com) or a dedicated \
                domain: if the incoming domain is the company's mail domain, an attacker can sign up to a \
                service that trusts that domain (Slack) with a project's address, and the confirmation \
                mail becomes an issue they can read";
    for domain in domains {
        let parent_of_host = host.ends_with(&format!(".{domain}"));
        if domain == host || parent_of_host || mydomain.as_deref() == Some(domain.as_str()) {
            let why = if domain == host {
                "is GitLab's own host name".to_string()
            } else if parent_of_host {
                format!("is a parent of GitLab's host {host}, likely the company's main domain")
            } else {
                "is Postfix's $mydomain, the company's main mail domain".to_string()
            };
            report.warn(
                "security",
                &domain,
                format!("incoming domain {domain} {why}"),
                hint,
            );
        } else {
            report.ok(
                "security",
                &domain,
                "incoming domain is separate from GitLab's host and $mydomain".into(),
            );
        }
    }
}

/// The drain's side: GitLab's URL and each route's secret file, read the
/// way the drain (and GitLab) read it. Messages never show the secret.
pub(super) fn check_drain(config: &Config, report: &mut Report) {
    let Some(url) = &config.gitlab_url else {
        report.warn(
            "drain",
            "gitlab.url",
            "not set: mailpipe drain cannot hand the spool to GitLab".into(),
            "set gitlab.url to GitLab's external URL, like \"https://gitlab.example.com\"",
        );
        return;
    };
    report.ok(
        "drain",
        "gitlab.url",
        format!("posts to {url}/api/v4/internal/mail_room/<route>"),
    );
    for r in &config.routes {
        let subject = format!("{}.secret_file", r.route);
        match crate::drain::auth::Secret::load(r.secret_file.as_deref()) {
            Ok(_) => report.ok(
                "drain",
                &subject,
                "a 32-byte base64 secret, as GitLab wants".into(),
            ),
            Err(e) => report.error(
                "drain",
                &subject,
                e.to_string(),
                "point it at GitLab's secret file (gitlab.yml secret_file, e.g. \
                 /var/opt/gitlab/gitlab-rails/.gitlab_mailroom_secret), readable by the drain",
            ),
        }
    }
}

/// The drain signs every request with the route's secret (a JWT in the
/// `Gitlab-Mailroom-Api-Request` header) and posts whole messages: over
/// plain http to another machine, both cross the network in clear.
pub(super) fn check_gitlab_url(config: &Config, report: &mut Report) {
    let Some(url) = &config.gitlab_url else {
        return;
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if is_loopback(host) {
        return;
    }
    report.warn(
        "security",
        "gitlab.url",
        format!(
            "{} is plain http to {}, not a loopback address: the request token signed with the \
             mail_room secret, and every message, cross the network in clear",
            crate::status::printable(url, 200),
            crate::status::printable(host, 100)
        ),
        "use https:// (GitLab's external URL); plain http only to 127.0.0.1 or [::1] on the GitLab host",
    );
}

/// `localhost`, a name under `.localhost` (RFC 6761 §6.3), 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
