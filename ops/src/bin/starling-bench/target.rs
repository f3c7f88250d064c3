//! Where clients connect to and from: the broker addresses (`--host`) and the local
//! source addresses (`--source-ips`), both restricted to loopback.
//!
//! The tool is a load generator; it refuses to aim at anything but this machine so
//! that a typo cannot turn it on someone else's broker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

const DEFAULT_PORT: u16 = 1883;

/// The most addresses a `--source-ips` range may expand to.
const MAX_SOURCE_IPS: u32 = 65_536;

/// Only 127.0.0.0/8 is loopback for us (IPv6 `::1` has one address: no use for
/// spreading source ports, and keeping one family keeps binding simple).
fn is_loopback_v4(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_loopback())
}

/// Parses `--host` values: each may be a comma list of `HOST[:PORT]`.
pub fn parse_hosts(values: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let with_port = if item.contains(':') {
            item.to_owned()
        } else {
            format!("{item}:{DEFAULT_PORT}")
        };
        let addrs = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {item}: {e}"))?;
        let addr = addrs
            .into_iter()
            .find(|a| is_loopback_v4(a.ip()))
            .ok_or_else(|| format!("{item} is not a loopback (127.0.0.0/8) address"))?;
        out.push(addr);
    }
    if out.is_empty() {
        out.push(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)));
    }
    Ok(out)
}

/// Parses `--source-ips`: a comma list of addresses or `FIRST-LAST` ranges.
pub fn parse_source_ips(spec: Option<&str>) -> Result<Vec<IpAddr>, String> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_loopback(a)?, parse_loopback(b)?),
            None => {
                let ip = parse_loopback(item)?;
                (ip, ip)
            }
        };
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first || last - first >= MAX_SOURCE_IPS {
            return Err(format!("bad source address range {item}"));
        }
        out.extend((first..=last).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
    }
    Ok(out)
}

fn parse_loopback(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .trim()
        .parse()
        .map_err(|_| format!("{s} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{s} is not a loopback (127.0.0.0/8) address"));
    }
    Ok(ip)
}

/// Spreads clients round-robin over the targets and source addresses.
#[derive(Debug, Clone)]
pub struct Targets {
    pub hosts: Vec<SocketAddr>,
    pub sources: Vec<IpAddr>,
}

impl Targets {
    /// Broker address and optional source address of client number `n`.
    pub fn for_client(&self, n: usize) -> (SocketAddr, Option<IpAddr>) {
        let host = self.hosts[n % self.hosts.len()];
        let source = (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()]);
        (host, source)
    }
}

/// The soft limit on open files, from `/proc/self/limits`, to warn before a run that
/// would run out of descriptors half-way.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_default_port_and_comma_lists() {
        let hosts = parse_hosts(&["127.0.0.1,127.0.0.2:1884".into(), "localhost:9".into()])
            .expect("loopback hosts");
        assert_eq!(
            hosts,
            vec![
                "127.0.0.1:1883".parse().unwrap(),
                "127.0.0.2:1884".parse().unwrap(),
                "127.0.0.1:9".parse().unwrap(),
            ]
        );
        assert_eq!(
            parse_hosts(&[]).unwrap(),
            vec!["127.0.0.1:1883".parse().unwrap()]
        );
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        assert!(parse_hosts(&["10.0.0.1:1883".into()]).is_err());
        assert!(parse_source_ips(Some("192.168.0.1")).is_err());
    }

    #[test]
    fn source_ranges_expand() {
        let ips = parse_source_ips(Some("127.0.0.1-127.0.0.3,127.0.1.9")).unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_source_ips(Some("127.0.0.5-127.0.0.1")).is_err());
        assert!(parse_source_ips(None).unwrap().is_empty());
    }

    #[test]
    fn clients_are_spread_round_robin() {
        let targets = Targets {
            hosts: parse_hosts(&["127.0.0.1:1,127.0.0.1:2".into()]).unwrap(),
            sources: parse_source_ips(Some("127.0.0.10-127.0.0.12")).unwrap(),
        };
        assert_eq!(targets.for_client(3).0.port(), 2);
        assert_eq!(targets.for_client(4).1, Some("127.0.0.11".parse().unwrap()));
    }
}
