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
        let lock = config.state_base().join("nginx.lock");
        RealHost { runtime: Box::new(Runtimes::new(config)), nginx: RealNginx::new(&config.nginx, Some(lock)) }
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

/// An HTTP agent for probes: no connection reuse (a probe must open a new connection, as nginx does), no
/// redirects followed, any status returned rather than raised, `timeout` for the whole call, and no proxy from
/// the environment (`http_proxy` on a CI runner): what is probed is the app or nginx on this host.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

/// One HTTP probe: `Pass` when the status (and body substring, if configured) match.
pub fn probe(url: &str, health: &Health) -> Probe {
    let mut response = match agent(health.timeout.0).get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Probe::Refused(format!("GET {url}: connection refused"))
        }
        Err(e) => return Probe::Error(format!("GET {url}: {e}")),
    };
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
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

fn snippet(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        String::new()
    } else {
        let cut: String = b.chars().take(120).collect();
        format!(" (body: {cut:?})")
    }
}
