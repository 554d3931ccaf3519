# %pre of the mailpipe .rpm ($1: 1 install, 2 upgrade). See packaging/README.md.
# The accounts must exist before rpm lays down the spool folders they own.
# This is what Fedora's %sysusers_create_package expands to: the text below
# is /usr/lib/sysusers.d/mailpipe.conf, which is not installed yet (a test,
# tests/packaging_config.rs, keeps the two identical). Accounts that exist
# are left alone.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers --replace=/usr/lib/sysusers.d/mailpipe.conf - <<'SYSUSERS'
# mailpipe's system accounts (sysusers.d(5)); installed as
# /usr/lib/sysusers.d/mailpipe.conf and applied by the package scripts with
# systemd-sysusers. Accounts that already exist are left as they are.
#
# mailpipe        runs `mailpipe deliver` (Postfix master.cf: user=mailpipe).
#                 It parses mail from the Internet, so it is assumed to be
#                 taken over: it holds no secret and may write only the
#                 spool's tmp/ and new/ folders (through the group mailpipe).
# mailpipe-drain  runs `mailpipe drain` (packaging/systemd/mailpipe-drain.service)
#                 and owns the spool (tmpfiles.d/mailpipe.conf). It reads
#                 GitLab's mail_room secret (group mailpipe-drain) and the
#                 messages (group mailpipe). `mailpipe queue`, `requeue` and
#                 `drain` run as root become this account.
#
#Type Name           ID  GECOS                    Home directory     Shell
u     mailpipe       -   "mailpipe delivery"      /var/lib/mailpipe  /usr/sbin/nologin
u     mailpipe-drain -   "mailpipe drain"         /                  /usr/sbin/nologin
m     mailpipe-drain mailpipe
SYSUSERS
else
    getent group mailpipe >/dev/null || groupadd -r mailpipe
    getent passwd mailpipe >/dev/null ||
        useradd -r -g mailpipe -d /var/lib/mailpipe -M -s /usr/sbin/nologin -c "mailpipe delivery" mailpipe
    getent group mailpipe-drain >/dev/null || groupadd -r mailpipe-drain
    getent passwd mailpipe-drain >/dev/null ||
        useradd -r -g mailpipe-drain -d / -M -s /usr/sbin/nologin -c "mailpipe drain" mailpipe-drain
    usermod -a -G mailpipe mailpipe-drain
fi
