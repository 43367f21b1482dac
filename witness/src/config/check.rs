//! Small value checks shared by the node and policy validation.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::defaults::MAX_NAME_LEN;

/// A node, site or cluster name: 1..=63 characters of `[A-Za-z0-9._-]`.
/// Names end up in host-like contexts (metric labels, log fields, the data
/// dir's identity record), so nothing that needs quoting is allowed.
pub(crate) fn name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "{value:?} is {} characters long, more than {MAX_NAME_LEN}",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// A dialable `host:port`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port in 1..=65535. The unspecified addresses (`0.0.0.0`,
/// `[::]`) are refused because nobody can dial them.
pub(crate) fn host_port(value: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{value:?} is not [IPv6]:port"))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{value:?}: {ip:?} is not an IPv6 address"))?;
        if ip.is_unspecified() {
            return Err(format!(
                "{value:?} is the unspecified address, which nobody can dial"
            ));
        }
        (None, port)
    } else {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("{value:?} has no port"))?;
        if host.contains(':') {
            return Err(format!(
                "{value:?}: an IPv6 address needs brackets, e.g. \"[::1]:7400\""
            ));
        }
        (Some(host), port)
    };
    match port.parse::<u16>() {
        Ok(0) => return Err(format!("{value:?} has port 0, which nobody can dial")),
        Ok(_) => {}
        Err(_) => {
            return Err(format!(
                "{value:?}: port {port:?} is not a number in 1..=65535"
            ));
        }
    }
    if let Some(host) = host {
        hostname(host).map_err(|why| format!("{value:?}: {why}"))?;
    }
    Ok(())
}

/// A DNS name or an IPv4 address.
fn hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric {
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"))?;
        if ip.is_unspecified() {
            return Err(format!(
                "{host} is the unspecified address, which nobody can dial"
            ));
        }
        return Ok(());
    }
    if host.len() > 253 {
        return Err(format!("host name {host:?} is longer than 253 characters"));
    }
    for label in host.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are what DNS labels allow plus '_' and '.', nothing else.
    #[test]
    fn names_are_short_and_plain() {
        let long = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("svc1", true),
            ("dc-a", true),
            ("w_1.x", true),
            (&long[..63], true),
            ("", false),
            (&long, false),
            ("dc a", false),
            ("dc/a", false),
            ("é", false),
        ];
        for (value, ok) in cases {
            assert_eq!(name(value).is_ok(), *ok, "name({value:?})");
        }
    }

    /// Addresses must be dialable host:port pairs.
    #[test]
    fn host_port_accepts_only_dialable_addresses() {
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1:7400", true),
            ("svc1.dc-a.example.com:7400", true),
            ("localhost:1", true),
            ("[::1]:7400", true),
            ("[fe80::1]:65535", true),
            ("127.0.0.1", false),
            ("127.0.0.1:0", false),
            ("127.0.0.1:65536", false),
            ("127.0.0.1:http", false),
            (":7400", false),
            ("0.0.0.0:7400", false),
            ("[::]:7400", false),
            ("::1:7400", false),
            ("[::1]", false),
            ("[nope]:7400", false),
            ("300.1.1.1:7400", false),
            ("-bad.example:7400", false),
            ("a..b:7400", false),
            ("under_score:7400", false),
        ];
        for (value, ok) in cases {
            assert_eq!(
                host_port(value).is_ok(),
                *ok,
                "host_port({value:?}) = {:?}",
                host_port(value)
            );
        }
    }
}
