//! The machine cutover runs on: the configured runtime, the real nginx, HTTP probes over loopback, the system
//! clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{proc, select::Runtimes, Host, Nginx, Probe, Runtime};
use crate::config::{Config, Health};
use crate::nginx::RealNginx;

pub struct RealHost {
    runtime: Box<dyn Runtime>,
    nginx: RealNginx,
}

impl RealHost {
    pub fn new(config: &Config) -> RealHost {
        RealHost { runtime: Box::new(Runtimes::new(config)), nginx: RealNginx::new(&config.nginx) }
    }

    pub fn real_nginx(&self) -> &RealNginx {
        &self.nginx
    }
}

impl Host for RealHost {
    fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    fn nginx(&self) -> &dyn Nginx {
        &self.nginx
    }

    fn probe(&self, url: &str, health: &Health) -> Probe {
        probe(url, health)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }

    fn port_free(&self, addr: SocketAddr) -> bool {
        proc::port_free(addr)
    }

    fn who_listens(&self, port: u16) -> Option<(i32, String)> {
        proc::who_listens(port)
    }
}

/// One HTTP probe: `Pass` when the status (and body substring, if configured) match.
pub fn probe(url: &str, health: &Health) -> Probe {
    let agent = ureq::AgentBuilder::new().timeout(health.timeout.0).max_idle_connections(0).redirects(0).build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => {
            let refused = t.kind() == ureq::ErrorKind::ConnectionFailed
                && std::error::Error::source(&t)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
            let reason = format!("GET {url}: {}", transport_reason(&t));
            return if refused { Probe::Refused(reason) } else { Probe::Error(reason) };
        }
    };
    let status = response.status();
    let body = response.into_string().unwrap_or_default();
    if status != health.expect_status.0 {
        return Probe::Wrong(format!(
            "GET {url}: status {status}, expected {}{}",
            health.expect_status,
            snippet(&body)
        ));
    }
    if let Some(want) = &health.expect_body {
        if !body.contains(want.as_str()) {
            return Probe::Wrong(format!("GET {url}: body does not contain {want:?}{}", snippet(&body)));
        }
    }
    Probe::Pass
}

fn transport_reason(t: &ureq::Transport) -> String {
    let text = t.to_string();
    // ureq prefixes the URL; keep the part that says what happened.
    match text.rsplit_once(": ") {
        Some((_, reason)) if !reason.is_empty() => reason.to_string(),
        _ => text,
    }
}

fn snippet(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        String::new()
    } else {
        let cut: String = b.chars().take(120).collect();
        format!(" (body: {cut:?})")
    }
}
