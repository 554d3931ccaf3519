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

# Erase: Postfix still routing to the removed binary defers the GitLab
# domain's mail, then bounces it; and the secret files the admin installed
# stay. Say both (doc/drain.md, "Removing mailpipe").
if [ "$1" -eq 0 ]; then
    if command -v postconf >/dev/null 2>&1 && [ -n "$(postconf -M mailpipe/unix 2>/dev/null)" ]; then
        echo "mailpipe: Postfix still has the mailpipe service in master.cf: mail for the GitLab domain will be deferred, then bounced; remove the snippets (postconf -MX mailpipe/unix, and the GitLab domain from relay_domains and transport_maps), then postfix reload" >&2
    fi
    for f in /etc/mailpipe/*.secret; do
        [ -e "$f" ] || continue
        echo "mailpipe: kept $f (a copy of GitLab's mail_room secret, not the package's): remove it by hand (rm $f; rmdir /etc/mailpipe)" >&2
    done
fi
