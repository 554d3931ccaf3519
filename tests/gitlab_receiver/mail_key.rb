# Where GitLab's receiver finds the mail key in a stored message, run with
# the mail library GitLab itself uses (Debian's ruby-mail). Used by
# tests/gitlab_rules.rs to prove that what mailpipe stores is what GitLab
# reads, and that what mailpipe refuses GitLab would refuse too.
#
#   ruby mail_key.rb < jobs.jsonl
#
# Each input line is a JSON object {"file", "template", "host", "custom",
# "version"}: template is the mailbox address (incoming_email.address or
# service_desk_email.address; "-" for none), host is gitlab.host, custom a
# comma-separated list of custom Service Desk addresses (may be empty),
# version "newest" or "oldest" (GitLab 16.0). One JSON object is printed per
# job, in order: {"key":…, "source":…, "from":…, "subject":…}. (One process
# for many jobs: loading the mail gem costs a third of a second.)
#
# A restatement, written for this test, of the rules in GitLab's
#   gems/gitlab-email_handler/lib/gitlab/email_handler/mail_key.rb
#     (candidate order; template regex \A<?…(.+)…>?\z; References as an
#     Array, or a String scanned for <…>; reply-(.+)@host; Received "for <…>")
#   lib/gitlab/email/receiver.rb (custom Service Desk lookups on To only)
#   lib/gitlab/email/service_desk/custom_email.rb (+<reply key>, +verify)
#   lib/gitlab/email/receiver.rb at 16.0 (To, References, Delivered-To,
#     Envelope-To, X-Envelope-To; Received behind a feature flag)
require 'json'
require 'mail'

FULL_REPLY_KEY = /(?:[a-f\d]{32}|[0-9a-z]{1,4}-[0-9a-z]{25}(?:-[0-9a-z]{1,13})?|i_\d{1,19}-k_[a-f\d]{32}-t_\d{1,19})/

def gitlab_reads(path, template, host, custom, version)
  custom = custom.to_s.split(',')
  newest = version != 'oldest'

  address_regex =
    if template.nil? || template == '-'
      nil
    else
      before, after = template.split('%{key}', 2)
      if after.nil?
        /\A<?#{Regexp.escape(template)}>?\z/ # no capture group: never a key
      else
        /\A<?#{Regexp.escape(before)}(.+)#{Regexp.escape(after)}>?\z/
      end
    end

  key_of = lambda do |addr|
    next nil unless address_regex

    m = address_regex.match(addr.to_s)
    m && m[1]
  end

  custom_reply = lambda do |addr|
    m = /\+(#{FULL_REPLY_KEY})@/.match(addr.to_s)
    next nil unless m

    custom.include?(addr.sub("+#{m[1]}", '')) ? m[1] : nil
  end

  custom_settings = lambda do |addr|
    bare = addr.to_s.sub('+verify', '')
    custom.include?(bare) ? "<custom #{bare}>" : nil
  end

  raw_values = lambda do |mail, name|
    Array(mail[name]).map { |f| f.is_a?(Mail::Field) ? f.value : f.to_s }
  end

  find = lambda do |mail|
    Array(mail.to).each do |addr|
      key = newest ? (custom_reply.(addr) || key_of.(addr) || custom_settings.(addr)) : key_of.(addr)
      return [key, 'To'] if key
    end

    refs = mail.references
    ids = case refs
          when Array then refs
          when String then refs.scan(/(?!<)[^<>]+(?=>)/)
          else []
          end
    ids.each do |id|
      key = id.to_s[/\Areply-(.+)@#{Regexp.escape(host)}\z/, 1]
      return [key, 'References'] if key
    end

    headers =
      if newest
        %w[Delivered-To X-Delivered-To Envelope-To X-Envelope-To Received X-Original-To X-Forwarded-To Cc]
      else
        %w[Delivered-To Envelope-To X-Envelope-To]
      end
    headers.each do |name|
      values =
        case name
        when 'Cc' then Array(mail.cc)
        when 'Received' then Array(mail[:received]).filter_map { |h| h.value[/for\s+<([^<]+)>/, 1] }
        else raw_values.(mail, name)
        end
      values.each do |v|
        key = key_of.(v)
        return [key, name] if key
      end
    end
    [nil, nil]
  end

  mail = Mail::Message.new(File.binread(path))
  key, source = find.(mail)
  JSON.generate(
    key: key, source: source,
    from: Array(mail.from).first, subject: mail.subject
  )
end

$stdin.each_line do |line|
  job = JSON.parse(line)
  puts gitlab_reads(job['file'], job['template'], job['host'], job['custom'], job['version'])
  $stdout.flush
end
