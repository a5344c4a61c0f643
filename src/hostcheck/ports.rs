//! Pool ports and the kernel's ephemeral ports.
//!
//! Outgoing connections take their local port from `net.ipv4.ip_local_port_range` (minus
//! `net.ipv4.ip_local_reserved_ports`). A pool port inside that range can be held at any moment by a client
//! connection (the app's own calls to a database, nginx's to an upstream): the deploy that needs it then finds
//! it busy. TIME-WAIT sockets on a pool port are another matter: they are what closed connections leave behind
//! for a minute, and they do not stop a listener from binding with SO_REUSEADDR, which the apps cutover runs
//! (and cutover's own port test) use; `check` counts them as free and says so.

use std::ops::RangeInclusive;

use super::Finding;
use crate::config::Config;

/// `32768\t60999` → 32768..=60999.
pub fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut w = text.split_whitespace();
    let lo = w.next()?.parse().ok()?;
    let hi = w.next()?.parse().ok()?;
    Some(lo..=hi)
}

/// `8081-8082,9000` → [8081..=8082, 9000..=9000]; empty for an empty file.
pub fn parse_reserved(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .filter_map(|p| match p.trim().split_once('-') {
            Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
            None => {
                let n = p.trim().parse().ok()?;
                Some(n..=n)
            }
        })
        .collect()
}

/// The pool ports an outgoing connection may take: inside the range and not reserved.
pub fn ephemeral(pool: &[u16], range: &RangeInclusive<u16>, reserved: &[RangeInclusive<u16>]) -> Vec<u16> {
    pool.iter().copied().filter(|p| range.contains(p) && !reserved.iter().any(|r| r.contains(p))).collect()
}

/// `8081-8083, 9000`: ports as runs.
pub fn runs(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// The "ephemeral ports" item.
pub fn ephemeral_item(cfg: &Config) -> Finding {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}")).unwrap_or_default();
    let Some(range) = parse_range(&read("ip_local_port_range")) else {
        return Finding::ok("ephemeral ports", "net.ipv4.ip_local_port_range is not readable here; not checked");
    };
    let reserved = parse_reserved(&read("ip_local_reserved_ports"));
    let pool = cfg.pool();
    let hit = ephemeral(&pool, &range, &reserved);
    let span = format!("{}-{}", range.start(), range.end());
    if hit.is_empty() {
        return Finding::ok(
            "ephemeral ports",
            format!("no pool port is one outgoing connections can take (net.ipv4.ip_local_port_range {span})"),
        );
    }
    Finding::fail(
        "ephemeral ports",
        format!(
            "pool port(s) {} are inside net.ipv4.ip_local_port_range {span}: any outgoing connection may hold one \
             when a deploy needs it",
            runs(&hit)
        ),
        format!(
            "move ports.pool below {}, or reserve them: sysctl -w net.ipv4.ip_local_reserved_ports={} (and put it \
             in /etc/sysctl.d/ to keep it after a reboot)",
            range.start(),
            runs(&hit)
        ),
    )
}

/// TIME-WAIT sockets whose local port is one of `ports`, in the text of /proc/net/tcp or tcp6.
pub fn time_wait(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            f.get(3) == Some(&"06") && local.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// A note for the ports item: TIME-WAIT sockets on pool ports, which were counted as free.
pub fn time_wait_note(pool: &[u16]) -> Option<String> {
    let n: usize = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .map(|t| time_wait(&t, pool))
        .sum();
    (n > 0).then(|| format!("{n} TIME-WAIT socket(s) on pool ports, counted free: they do not stop a bind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ports_in_the_ephemeral_range_unless_reserved() {
        let range = parse_range("32768\t60999\n").unwrap();
        let reserved = parse_reserved("40001-40002,50000\n");
        assert_eq!(reserved, vec![40001..=40002, 50000..=50000]);
        assert!(parse_reserved("\n").is_empty());
        assert_eq!(ephemeral(&[8081, 8082], &range, &reserved), Vec::<u16>::new());
        assert_eq!(ephemeral(&[40000, 40001, 40002, 40003, 50000], &range, &reserved), vec![40000, 40003]);
        assert_eq!(runs(&[40003, 40000, 40001, 9000]), "9000,40000-40001,40003");
    }

    #[test]
    fn time_wait_sockets_are_counted_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                     0: 0100007F:1F91 0100007F:C350 06 00000000:00000000 00:00000000 00000000 0 0 0 1\n\
                     1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1\n\
                     2: 0100007F:C350 0100007F:1F91 06 00000000:00000000 00:00000000 00000000 0 0 0 1\n";
        assert_eq!(time_wait(table, &[8081]), 1, "the listener is not counted, the other end's port is not ours");
        assert_eq!(time_wait(table, &[8082]), 0);
    }
}
