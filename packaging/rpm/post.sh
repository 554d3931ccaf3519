# %post of the mailpipe .rpm ($1: 1 install, 2 upgrade). See packaging/README.md.
# The spool and the account's home, with the owners and modes of
# /usr/lib/tmpfiles.d/mailpipe.conf (Fedora's %tmpfiles_create); on upgrade
# this repairs owners and modes, and it never deletes anything. Without
# systemd-tmpfiles, the same file is read here. (The folders are not in the
# payload: cargo-generate-rpm 0.21.1 cannot package empty directories.)
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create mailpipe.conf
else
    while read -r type path mode user group _; do
        [ "$type" = d ] || continue
        install -d -m "$mode" -o "$user" -g "$group" "$path"
    done < /usr/lib/tmpfiles.d/mailpipe.conf
fi
# mailpipe-drain.service is installed but neither enabled nor started: it
# needs GitLab's URL and secret first (see /etc/mailpipe/mailpipe.toml).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
