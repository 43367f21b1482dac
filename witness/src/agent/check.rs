//! Value checks for everything the agent puts into a command line or dials:
//! host names, `host:port` endpoints, account names, user names.
//!
//! Commands are argv arrays, so no value is ever parsed by a shell; these
//! checks close the remaining doors. A value that starts with `-` could be
//! read as an option by the program it is passed to, a space or a newline
//! would split or garble a log line, and an account name comes from the
//! Carbonio CLI's own output, which the agent does not control. So every
//! value is held to the narrowest syntax that real values have, and
//! anything else is refused with the reason, never "cleaned up".

pub(crate) use crate::config::check::{host_port, name};

/// Longest host name (RFC 1035, without the trailing dot).
pub const MAX_HOSTNAME: usize = 253;
/// Longest e-mail address an account name may be (RFC 5321's path limit).
pub const MAX_ACCOUNT: usize = 254;
/// Longest local part of an account name.
pub const MAX_LOCAL_PART: usize = 64;
/// Longest user name (useradd's limit).
pub const MAX_USER: usize = 32;

/// A plain DNS host name: dot-separated labels of 1-63 letters, digits and
/// `-`, no label starting or ending with `-`; a trailing dot is refused
/// (Carbonio names servers without one). A dotted-quad IPv4 address is
/// refused too: Carbonio identifies mailstores by name.
pub fn hostname(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the host name is empty".into());
    }
    if value.len() > MAX_HOSTNAME {
        return Err(format!(
            "host name {:?}… is longer than {MAX_HOSTNAME} characters",
            value.chars().take(40).collect::<String>()
        ));
    }
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-', which a program would read as an option"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; a host name has only letters, digits, '-' and '.'"
        ));
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{value:?} has an empty label (\"..\" or a dot at an end)"
            ));
        }
        if label.len() > 63 {
            return Err(format!("{value:?} has a label longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{value:?} has a label that starts or ends with '-'"
            ));
        }
    }
    if value
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{value:?} is an IP address; write the server's host name as Carbonio knows it"
        ));
    }
    Ok(())
}

/// An account name as Carbonio prints it: `local@domain`, the local part
/// made of letters, digits and `. _ % + -` (not starting with `.` or `-`),
/// the domain a [`hostname`] with at least one dot. Narrower than RFC 5322
/// on purpose: an account with a quote or a space in its name is refused
/// (and reported), not passed to `zmprov`.
pub fn account(value: &str) -> Result<(), String> {
    if value.len() > MAX_ACCOUNT {
        return Err(format!(
            "account name {:?}… is longer than {MAX_ACCOUNT} characters",
            value.chars().take(40).collect::<String>()
        ));
    }
    let Some((local, domain)) = value.split_once('@') else {
        return Err(format!("{value:?} is not an e-mail address (no '@')"));
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return Err(format!(
            "{value:?}: the part before '@' must have 1-{MAX_LOCAL_PART} characters"
        ));
    }
    if local.starts_with(['-', '.']) {
        return Err(format!("{value:?} starts with {:?}", &local[..1]));
    }
    if let Some(bad) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; only letters, digits and . _ % + - are accepted \
             before the '@'"
        ));
    }
    if !domain.contains('.') {
        return Err(format!("{value:?}: the domain {domain:?} has no dot"));
    }
    hostname(domain).map_err(|why| format!("{value:?}: the domain is not valid: {why}"))
}

/// A Unix user name: 1-32 of `[a-z0-9_-]`, starting with a letter or `_`.
pub fn user(value: &str) -> Result<(), String> {
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if value.is_empty() || value.len() > MAX_USER || !first_ok || !rest_ok {
        return Err(format!(
            "{value:?} is not a user name: 1-{MAX_USER} of lower-case letters, digits, '_' \
             and '-', starting with a letter or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile or malformed host names never pass, plain ones do.
    #[test]
    fn hostname_accepts_only_plain_names() {
        let long_label = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("mbox1.example.com", true),
            ("mbox1", true),
            ("kc-ha1-r8-mbox1.demo.zextras.io", true),
            ("", false),
            ("-rf", false),
            ("--help", false),
            ("mbox1; rm -rf /", false),
            ("mbox1 example.com", false),
            ("mbox1\nexample.com", false),
            ("mbox1.example.com.", false),
            ("a..b", false),
            ("primary_mailbox.example.com", false),
            ("$(id).example.com", false),
            ("10.0.0.1", false),
            (&format!("{long_label}.com"), false),
            ("mbox-.example.com", false),
        ];
        for (value, ok) in cases {
            assert_eq!(
                hostname(value).is_ok(),
                *ok,
                "hostname({value:?}) = {:?}",
                hostname(value)
            );
        }
    }

    /// Account names are narrow e-mail addresses; shell and option tricks fail.
    #[test]
    fn account_refuses_hostile_names() {
        let cases: &[(&str, bool)] = &[
            ("alice@example.com", true),
            ("first.last+tag@mail.example.org", true),
            ("o_k-1%x@example.com", true),
            ("alice", false),
            ("-a@example.com", false),
            (".a@example.com", false),
            ("alice@localhost", false),
            ("a b@example.com", false),
            ("a'b@example.com", false),
            ("alice@example.com; rm -rf /", false),
            ("alice@example.com\nbob@example.com", false),
            ("alice@-example.com", false),
            ("$(reboot)@example.com", false),
            ("@example.com", false),
        ];
        for (value, ok) in cases {
            assert_eq!(
                account(value).is_ok(),
                *ok,
                "account({value:?}) = {:?}",
                account(value)
            );
        }
    }

    /// Endpoints are dialable host:port pairs.
    #[test]
    fn host_port_accepts_dialable_endpoints() {
        let cases: &[(&str, bool)] = &[
            ("svc1.dc-a.example.com:7400", true),
            ("127.0.0.1:7400", true),
            ("[::1]:7400", true),
            ("svc1:0", false),
            ("svc1", false),
            ("0.0.0.0:7400", false),
            ("::1:7400", false),
            ("-svc1:7400", false),
            ("svc 1:7400", false),
        ];
        for (value, ok) in cases {
            assert_eq!(host_port(value).is_ok(), *ok, "host_port({value:?})");
        }
    }

    /// User names follow useradd's rules.
    #[test]
    fn user_names() {
        for ok in ["zextras", "_svc", "a-b_1"] {
            assert!(user(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Zextras",
            "-x",
            "1abc",
            "zextras;id",
            "a b",
            "a".repeat(33).as_str(),
        ] {
            assert!(user(bad).is_err(), "{bad}");
        }
    }
}
