# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mailpipe_global_optspecs
    string join \n h/help V/version
end

function __fish_mailpipe_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mailpipe_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mailpipe_using_subcommand
    set -l cmd (__fish_mailpipe_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mailpipe -n "__fish_mailpipe_needs_command" -s h -l help -d 'Print help'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -s V -l version -d 'Print version'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "deliver" -d 'Deliver one message from stdin into the spool (run by Postfix)'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "explain" -d 'Print, as JSON, the decision `deliver` would make; write nothing'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "check" -d 'Check the configuration, the spool and Postfix; run it after every change. Exit 0 when nothing is an error, 1 otherwise'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "drain" -d 'Hand the spooled messages to GitLab\'s mail_room API (a daemon under systemd; `--once` for cron). Exit 1 when it cannot start, or when `--once` left a message deferred'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "queue" -d 'List the spool per route and state, the oldest message\'s age, and deferred and failed messages with their reasons (like `postqueue -p`)'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "requeue" -d 'Move failed messages back into the queue (like `postsuper -r`)'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "policy" -d 'Postfix policy service (check_policy_service): refuse at RCPT TO what deliver would bounce (550 5.1.1, 552 5.3.4) and rate-limit mail loops (450 4.7.1); any failure answers DUNNO. A daemon: systemd\'s mailpipe-policy.socket, or --listen. Exit 1 when it cannot listen'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "health" -d 'One-line health check for Nagios, Icinga or Zabbix: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, with performance data'
complete -c mailpipe -n "__fish_mailpipe_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -l sender -d 'Envelope sender (`${sender}`); empty means the null sender' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -l recipient -d 'Envelope recipient (`${recipient}`). Given twice, mailpipe defers: set the transport\'s destination_recipient_limit to 1' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -l original-recipient -d 'Recipient as first received (`${original_recipient}`)' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -l queue-id -d 'Postfix queue id (`${queue_id}`), for logs and file names' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand deliver" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -l sender -d 'Envelope sender (`${sender}`); empty means the null sender' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -l recipient -d 'Envelope recipient (`${recipient}`). Given twice, mailpipe defers: set the transport\'s destination_recipient_limit to 1' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -l original-recipient -d 'Recipient as first received (`${original_recipient}`)' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -l queue-id -d 'Postfix queue id (`${queue_id}`), for logs and file names' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand explain" -s h -l help -d 'Print help'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -l format -d 'Output format' -r -f -a "text\t'One line per check, for a person'
json\t'One JSON object, for monitoring'"
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -l postfix-config -d 'Check the Postfix instance in this configuration directory (`postconf -c DIR`)' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -l user -d 'The user Postfix runs mailpipe as, when master.cf does not say' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -l send-test -d 'Send a probe message through Postfix and report where it ended'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand drain" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand drain" -l once -d 'Try every waiting message once, then exit'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand drain" -l flush -d 'Try deferred messages now, ignoring their next-attempt time (like `postqueue -f`)'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand drain" -s h -l help -d 'Print help'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand queue" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand queue" -l format -d 'Output format' -r -f -a "text\t'One line per check, for a person'
json\t'One JSON object, for monitoring'"
complete -c mailpipe -n "__fish_mailpipe_using_subcommand queue" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand requeue" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand requeue" -l route -d 'Only this route (incoming_email or service_desk_email)' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand requeue" -s h -l help -d 'Print help'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand policy" -l config -d 'Configuration file (re-read when it changes)' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand policy" -l listen -d 'Listen on `unix:PATH` or `inet:127.0.0.1:PORT` (loopback only) instead of the socket systemd passes' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand policy" -s h -l help -d 'Print help'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -l config -d 'Configuration file' -r -F
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -s w -l warning-age -d 'WARNING when the oldest queued message is older than this' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -s c -l critical-age -d 'CRITICAL when the oldest queued message is older than this' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -l warning-free -d 'WARNING when less than this share of the spool\'s space or inodes is free' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -l critical-free -d 'CRITICAL below this share (and always when fewer than two messages of limits.max_message_bytes fit)' -r
complete -c mailpipe -n "__fish_mailpipe_using_subcommand health" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "deliver" -d 'Deliver one message from stdin into the spool (run by Postfix)'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "explain" -d 'Print, as JSON, the decision `deliver` would make; write nothing'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "check" -d 'Check the configuration, the spool and Postfix; run it after every change. Exit 0 when nothing is an error, 1 otherwise'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "drain" -d 'Hand the spooled messages to GitLab\'s mail_room API (a daemon under systemd; `--once` for cron). Exit 1 when it cannot start, or when `--once` left a message deferred'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "queue" -d 'List the spool per route and state, the oldest message\'s age, and deferred and failed messages with their reasons (like `postqueue -p`)'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "requeue" -d 'Move failed messages back into the queue (like `postsuper -r`)'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "policy" -d 'Postfix policy service (check_policy_service): refuse at RCPT TO what deliver would bounce (550 5.1.1, 552 5.3.4) and rate-limit mail loops (450 4.7.1); any failure answers DUNNO. A daemon: systemd\'s mailpipe-policy.socket, or --listen. Exit 1 when it cannot listen'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "health" -d 'One-line health check for Nagios, Icinga or Zabbix: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, with performance data'
complete -c mailpipe -n "__fish_mailpipe_using_subcommand help; and not __fish_seen_subcommand_from deliver explain check drain queue requeue policy health help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
