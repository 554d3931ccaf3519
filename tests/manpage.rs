//! The man page `doc/mailpipe.8` and the shell completions under
//! `doc/completions/` are generated from the command line definition
//! (`mailpipe::cli::Cli`) and checked in, so the packages can ship them
//! without a build script. This test generates them again and fails when the
//! checked-in files differ: the CLI and its documentation cannot drift apart.
//!
//! After changing the CLI (or the version in Cargo.toml), regenerate with:
//!
//! ```sh
//! MAILPIPE_BLESS=1 cargo test --test manpage
//! ```
//!
//! The EXIT STATUS table of the man page is taken from README.md's "Exit
//! status" table, and its CONFIGURATION table from README.md's
//! "Configuration" table, so the two always say the same thing.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use mailpipe::cli::Cli;

const BLESS_VAR: &str = "MAILPIPE_BLESS";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Roff for plain text: backslashes escaped, a leading `.` or `'` neutralised.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Roff for one Markdown table cell: `code` in bold (with `\-` for its
/// hyphens, so options and addresses can be copied), `…` as "...".
fn roff_cell(cell: &str) -> String {
    let mut out = String::new();
    for (i, part) in cell.trim().replace('…', "...").split('`').enumerate() {
        let part = roff_escape(part);
        if i % 2 == 1 {
            out.push_str("\\fB");
            out.push_str(&part.replace('-', "\\-"));
            out.push_str("\\fR");
        } else {
            out.push_str(&part);
        }
    }
    out
}

/// The rows of README.md's "## Exit status" table, header row first.
fn readme_exit_table() -> Vec<Vec<String>> {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Exit status\n")
        .nth(1)
        .expect("README.md has a \"## Exit status\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter(|l| {
            !l.trim_matches(|c| c == '|' || c == '-' || c == ' ')
                .is_empty()
        })
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "README.md's exit status table has no rows");
    for row in &rows {
        assert_eq!(
            row.len(),
            3,
            "README.md exit status row {row:?} needs 3 cells"
        );
    }
    rows
}

/// The rows of README.md's settings table (under "## Configuration", the
/// one whose header is `| setting | default | meaning |`), header first.
fn readme_config_table() -> Vec<Vec<String>> {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README.md has a \"## Configuration\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<Vec<String>> = section
        .lines()
        .skip_while(|l| !l.starts_with("| setting |"))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| {
            !l.trim_matches(|c| c == '|' || c == '-' || c == ' ')
                .is_empty()
        })
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 5, "README.md's settings table has no rows");
    for row in &rows {
        assert_eq!(row.len(), 3, "README.md settings row {row:?} needs 3 cells");
    }
    rows
}

/// The CONFIGURATION section: the file's format and README.md's table of
/// every setting.
fn configuration_section() -> String {
    let mut s = String::from(
        ".SH CONFIGURATION\n\
         The configuration is TOML, by default \\fI/etc/mailpipe/mailpipe.toml\\fR\n\
         (\\fB\\-\\-config\\fR \\fIFILE\\fR overrides it). The names follow GitLab\\(aqs\n\
         \\fIgitlab.yml\\fR; the setting \\fBsection.name\\fR below is the line\n\
         \\fBname = ...\\fR in the table \\fB[section]\\fR. An unknown setting is an error that names its line; while the\n\
         file is broken, \\fBdeliver\\fR defers. The installed file shows every setting\n\
         with its default. Run \\fBmailpipe check\\fR after every change.\n\
         .PP\n",
    );
    s.push_str(".TS\nallbox;\nlb lb lb\nl l lx.\n");
    for (i, row) in readme_config_table().iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| roff_cell(c)).collect();
        if i == 0 {
            s.push_str(&cells.join("\t"));
        } else {
            s.push_str(&format!(
                "{}\t{}\tT{{\n{}\nT}}",
                cells[0], cells[1], cells[2]
            ));
        }
        s.push('\n');
    }
    s.push_str(".TE\n");
    s
}

/// One command's synopsis line: every option with its value name, as
/// `[--config <FILE>]` (clap_mangen's own synopsis shows `[--config]`).
fn synopsis_line(sub: &clap::Command) -> String {
    let mut line = format!(
        "\\fB{}\\fR",
        roff_escape(sub.get_bin_name().unwrap_or("mailpipe")).replace('-', "\\-")
    );
    for arg in sub.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let values: Vec<String> = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| format!(" \\fI<{n}>\\fR")).collect())
            .unwrap_or_default();
        let takes_value = arg.get_action().takes_values();
        if arg.is_positional() {
            let name = arg.get_id().as_str().to_uppercase();
            let name = arg
                .get_value_names()
                .and_then(|v| v.first().map(|n| n.to_string()))
                .unwrap_or(name);
            line.push_str(&format!(" \\fI<{name}>\\fR..."));
            continue;
        }
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(c), Some(l)) => format!("\\fB\\-{c}\\fR|\\fB\\-\\-{}\\fR", l.replace('-', "\\-")),
            (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", l.replace('-', "\\-")),
            (Some(c), None) => format!("\\fB\\-{c}\\fR"),
            (None, None) => continue,
        };
        let value = if takes_value {
            if values.is_empty() {
                format!(" \\fI<{}>\\fR", arg.get_id().as_str().to_uppercase())
            } else {
                values.concat()
            }
        } else {
            String::new()
        };
        line.push_str(&format!(" [{flag}{value}]"));
    }
    line.push('\n');
    line
}

/// The hand-written EXIT STATUS section, with README.md's table.
fn exit_status_section() -> String {
    let mut s = String::from(
        ".SH \"EXIT STATUS\"\n\
         The only exit statuses of \\fBmailpipe deliver\\fR, the only command Postfix\n\
         runs, are 0, 65, 67 and 75.\n\
         Postfix\\(aqs \\fBpipe\\fR(8) bounces every exit status except 0, 71 and 75,\n\
         and text that starts with an enhanced status code overrides the exit status,\n\
         so mailpipe prints at most one line and it always starts with the code that\n\
         matches its exit status.\n\
         .PP\n",
    );
    s.push_str(".TS\nallbox;\nlb lb lb\nlx l l.\n");
    for (i, row) in readme_exit_table().iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| roff_cell(c)).collect();
        if i == 0 {
            s.push_str(&cells.join("\t"));
        } else {
            s.push_str(&format!(
                "T{{\n{}\nT}}\t{}\tT{{\n{}\nT}}",
                cells[0], cells[1], cells[2]
            ));
        }
        s.push('\n');
    }
    s.push_str(".TE\n");
    s.push_str(
        ".PP\n\
         A Rust panic would exit 101, which Postfix bounces; mailpipe\\(aqs panic hook\n\
         removes the half\\-written file, prints the \\fB4.3.0\\fR line and exits 75 instead.\n\
         Output errors (a closed or full stdout or stderr) never change the exit status.\n\
         \\fBmailpipe explain\\fR always exits 0 and prints a JSON object; its\n\
         \\fBexit_code\\fR field is what \\fBdeliver\\fR would return.\n\
         .PP\n\
         The other commands (\\fBcheck\\fR, \\fBexplain\\fR, \\fBqueue\\fR, \\fBrequeue\\fR,\n\
         \\fBdrain\\fR) are not run by Postfix and exit like interactive tools: 0 when all\n\
         is well; 1 when they failed or found problems; 64 for a usage error, with the\n\
         message on stderr and nothing on stdout; 70 for a bug (a panic, reported on\n\
         stderr). A usage error without a recognisable command (none, or a misspelt one)\n\
         is answered as \\fBdeliver\\fR answers it, 75 and \\fB4.3.5\\fR, because Postfix may\n\
         be the caller.\n",
    );
    s
}

const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/mailpipe/mailpipe.toml\fR
The configuration (TOML): the GitLab addresses, \fBgitlab.host\fR, the spool
and the limits. The installed file is an annotated example.
.TP
\fI/var/spool/mailpipe/\fR\fBincoming_email\fR/{\fBtmp\fR,\fBnew\fR,\fBcur\fR}/
.TQ
\fI/var/spool/mailpipe/\fR\fBservice_desk_email\fR/{\fBtmp\fR,\fBnew\fR,\fBcur\fR}/
The Maildir spool: \fBdeliver\fR writes each message to \fBtmp/\fR and links it
into \fBnew/\fR; the drain posts it to GitLab.
.TP
\fI/usr/share/mailpipe/postfix/\fR
The Postfix snippets (\fBmaster.cf\fR, \fBmain.cf\fR, recipient maps, the
\fBlocal\fR(8) variants) and their README. The package does not change
Postfix\(aqs configuration.
.TP
\fImailpipe\-drain.service\fR
The systemd unit of \fBmailpipe drain\fR, which runs as the user
\fBmailpipe\-drain\fR (a member of the group \fBmailpipe\fR). It is installed
but not enabled: enable it once \fBgitlab.url\fR and the secret files are set.
Without systemd, run the same in the foreground (under a supervisor, or
\fBnohup\fR):
.RS
.nf
runuser \-u mailpipe\-drain \-\- mailpipe drain \-\-config=/etc/mailpipe/mailpipe.toml
.fi
.RE
.TP
\fI/usr/share/doc/mailpipe/drain.md\fR
Setting up the drain: secret files, accounts, the unit, monitoring
(\fBmailpipe health\fR, Prometheus metrics) and removing the package
(remove the Postfix snippets first).
.SH "SEE ALSO"
\fBpipe\fR(8), \fBlocal\fR(8), \fBpostconf\fR(5), \fBmaster\fR(5)
"#;

const DESCRIPTION_SECTION: &str = r#".SH DESCRIPTION
\fBmailpipe\fR hands GitLab\(aqs incoming email (replies, new issues and merge
requests by email, Service Desk) from Postfix to GitLab without an IMAP
mailbox. Postfix runs \fBmailpipe deliver\fR through its \fBpipe\fR(8)
transport (or from an alias, \fI.forward\fR or procmail) once per message, as
the unprivileged user \fBmailpipe\fR. mailpipe drops auto\-replies, finds the
GitLab key in the envelope recipient or in the headers GitLab reads, answers
Postfix with a sysexits code (so Postfix accepts, bounces or defers), and
writes the message durably into a Maildir spool. \fBmailpipe drain\fR posts
the spool to GitLab\(aqs mail_room API.
.PP
A configuration mistake, a full disk or any other local problem defers the
message (Postfix keeps it and retries); only a message without a valid GitLab
key, a message that is too large and an empty message bounce.
"#;

/// Renders one clap_mangen section into a string.
fn render(f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// roff's preamble, which clap_mangen repeats before every section.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// A rendered section without the preamble and, when `heading` is false,
/// without its `.SH` line.
fn section(text: String, heading: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if PREAMBLE.contains(&line) || (!heading && line.starts_with(".SH")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The subcommands documented in the man page (not clap's `help`).
fn commands(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.clone().bin_name(format!("mailpipe {}", s.get_name())))
        .collect()
}

/// The man page, as checked in at doc/mailpipe.8.
fn man_page() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual");
    let mut page = String::from("'\\\" t\n");
    // The title keeps the preamble (it defines \*(Aq); the sections drop it.
    page.push_str(&render(|w| man.render_title(w)));
    page.push_str(&section(render(|w| man.render_name_section(w)), true));
    page.push_str(&section(render(|w| man.render_synopsis_section(w)), true));
    for sub in commands(&cmd) {
        page.push_str(".br\n");
        page.push_str(&synopsis_line(&sub));
    }
    page.push_str(DESCRIPTION_SECTION);
    page.push_str(&section(render(|w| man.render_options_section(w)), true));
    page.push_str(".SH COMMANDS\n");
    for sub in commands(&cmd) {
        let name = sub.get_name().to_string();
        let sub_man = Man::new(sub);
        page.push_str(&format!(".SS {name}\n"));
        page.push_str(&section(
            render(|w| sub_man.render_description_section(w)),
            false,
        ));
        page.push_str(&section(
            render(|w| sub_man.render_options_section(w)),
            false,
        ));
    }
    page.push_str(&configuration_section());
    page.push_str(&exit_status_section());
    page.push_str(FILES_SECTION);
    page
}

/// The completion scripts: (file under doc/completions/, content).
fn completions() -> Vec<(&'static str, String)> {
    [
        (Shell::Bash, "mailpipe.bash"),
        (Shell::Zsh, "_mailpipe"),
        (Shell::Fish, "mailpipe.fish"),
    ]
    .into_iter()
    .map(|(shell, file)| {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "mailpipe", &mut out);
        (file, String::from_utf8(out).unwrap())
    })
    .collect()
}

/// Compares `path` with `expected`, or writes it when blessing.
fn check(path: &Path, expected: &str, stale: &mut Vec<String>) {
    let rel = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    if std::env::var_os(BLESS_VAR).is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, expected).unwrap();
        return;
    }
    match fs::read_to_string(path) {
        Ok(actual) if actual == expected => {}
        Ok(_) => stale.push(format!("{rel} differs from the generated text")),
        Err(e) => stale.push(format!("{rel}: {e}")),
    }
}

fn report(stale: Vec<String>) {
    assert!(
        stale.is_empty(),
        "{}\nThe CLI (src/cli.rs), Cargo.toml's version or README.md's exit status table \
         changed. Regenerate and commit the files with:\n  {BLESS_VAR}=1 cargo test --test manpage",
        stale.join("\n")
    );
}

#[test]
fn man_page_is_in_sync() {
    let mut stale = Vec::new();
    check(&root().join("doc/mailpipe.8"), &man_page(), &mut stale);
    report(stale);
}

#[test]
fn completions_are_in_sync() {
    let mut stale = Vec::new();
    for (file, text) in completions() {
        check(
            &root().join("doc/completions").join(file),
            &text,
            &mut stale,
        );
    }
    report(stale);
}

#[test]
fn man_page_has_the_exit_status_table() {
    let page = man_page();
    assert!(page.contains(".SH \"EXIT STATUS\""));
    for row in readme_exit_table().iter().skip(1) {
        assert!(
            page.contains(&format!("}}\t{}\tT{{", row[1])),
            "exit status {} of README.md is missing from the man page",
            row[1]
        );
    }
}
