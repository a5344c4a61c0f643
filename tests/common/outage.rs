//! A load client that remembers when each request failed, to measure how long nginx answered non-2xx while an
//! app was down (a kill -9, a reboot). It reports; the tests assert what must hold, never a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http_get;

pub struct Outage {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    /// (ms since start, succeeded) of every request.
    log: Arc<Mutex<Vec<(u64, bool)>>>,
    pub started: Instant,
}

/// What the client saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub requests: usize,
    pub failed: usize,
    /// From the first failed request to the first success after the last failed one, in ms (0 without failures).
    pub window_ms: u64,
}

impl Outage {
    /// `clients` threads sending `Connection: close` GETs through nginx on `port` (bounded: 120 s).
    pub fn start(port: u16, clients: usize) -> Outage {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let handles = (0..clients)
            .map(|_| {
                let (stop, log) = (stop.clone(), log.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                        let ok = matches!(http_get(port, "/", Duration::from_secs(5)), Ok((200, _)));
                        log.lock().unwrap().push((started.elapsed().as_millis() as u64, ok));
                        if !ok {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        Outage { stop, handles, log, started }
    }

    /// Stop the clients and say what they saw.
    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        let mut log = self.log.lock().unwrap().clone();
        log.sort();
        let failed = log.iter().filter(|(_, ok)| !ok).count();
        let window_ms = match (log.iter().find(|(_, ok)| !ok), log.iter().rev().find(|(_, ok)| !ok)) {
            (Some(first), Some(last)) => {
                let back = log.iter().find(|(t, ok)| *ok && *t >= last.0).map(|(t, _)| *t).unwrap_or(last.0);
                back - first.0
            }
            _ => 0,
        };
        Seen { requests: log.len(), failed, window_ms }
    }
}
