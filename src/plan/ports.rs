//! Which pool ports are idle: not used by this app and bindable on the exact address the app will use.

use std::fmt;

/// What holds a pool port, as the snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortUse {
    Free,
    /// One of this app's instances (`live v2`, `previous v1`, …).
    Ours(String),
    /// Another program: who, when /proc tells.
    Other(Option<(i32, String)>),
}

impl fmt::Display for PortUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortUse::Free => f.write_str("free"),
            PortUse::Ours(what) => f.write_str(what),
            PortUse::Other(Some((pid, comm))) => write!(f, "in use by pid {pid} ({comm})"),
            PortUse::Other(None) => f.write_str("in use by another process"),
        }
    }
}

/// A port of the pool and why it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub port: u16,
    pub why: String,
}

/// Pick `n` ports from `pool` (in order) that are free and not in `taken`. Returns the picks and the reasons
/// the others were skipped.
pub fn pick(pool: &[(u16, PortUse)], n: usize, taken: &[(u16, String)]) -> (Vec<u16>, Vec<Busy>) {
    let mut picked = Vec::new();
    let mut busy = Vec::new();
    for (port, state) in pool {
        if picked.len() == n {
            break;
        }
        if let Some((_, who)) = taken.iter().find(|(p, _)| p == port) {
            busy.push(Busy { port: *port, why: who.clone() });
            continue;
        }
        match state {
            PortUse::Free => picked.push(*port),
            other => busy.push(Busy { port: *port, why: other.to_string() }),
        }
    }
    (picked, busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_picked_in_pool_order_skipping_taken_and_busy_ones() {
        let pool = [
            (8081, PortUse::Free),
            (8082, PortUse::Other(Some((41, "java".into())))),
            (8083, PortUse::Free),
            (8084, PortUse::Free),
        ];
        let (picked, busy) = pick(&pool, 1, &[(8081, "live v1".into())]);
        assert_eq!(picked, vec![8083]);
        assert_eq!(
            busy,
            vec![
                Busy { port: 8081, why: "live v1".into() },
                Busy { port: 8082, why: "in use by pid 41 (java)".into() }
            ]
        );
    }
}
