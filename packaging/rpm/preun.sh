# %preun of the mailpipe .rpm ($1: 0 erase, 1 upgrade). See packaging/README.md.
# On erase, stop and disable the drain and the policy units (Fedora's %systemd_preun).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now mailpipe-drain.service >/dev/null 2>&1 || :
    systemctl --no-reload disable --now mailpipe-policy.socket mailpipe-policy.service >/dev/null 2>&1 || :
fi
