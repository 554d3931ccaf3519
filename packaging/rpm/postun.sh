# %postun of the mailpipe .rpm ($1: 0 erase, 1 upgrade). See packaging/README.md.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # Upgrade: restart the drain if it runs (%systemd_postun_with_restart).
    if [ "$1" -ge 1 ]; then
        systemctl try-restart mailpipe-drain.service >/dev/null 2>&1 || :
        systemctl try-restart mailpipe-policy.service >/dev/null 2>&1 || :
    fi
fi
# Erase: rpm has removed the package's files and kept
# /etc/mailpipe/mailpipe.toml as .rpmsave if it was edited. Remove the
# package's folders that are now empty; a spool folder that still holds mail
# is kept, and so are the accounts (files may still belong to them).
if [ "$1" -eq 0 ]; then
    for dir in /var/spool/mailpipe /var/lib/mailpipe; do
        [ -d "$dir" ] || continue
        find "$dir" -xdev -depth -type d -empty -delete 2>/dev/null || :
        if [ -d "$dir" ]; then
            echo "mailpipe: kept $dir: it is not empty (spooled mail is never deleted)" >&2
        fi
    done
    for dir in /usr/share/mailpipe/postfix/local /usr/share/mailpipe/postfix \
        /usr/share/mailpipe /usr/share/doc/mailpipe /etc/mailpipe; do
        rmdir "$dir" 2>/dev/null || :
    done
fi
