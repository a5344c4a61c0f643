//! Test harness: a private nginx under a temp dir on loopback ports, the fixture app, and the real `cutover`
//! binary. Every test gets its own dir, ports and nginx; nothing touches the system nginx.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod outage;
pub mod sandbox;

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/app.py");

/// nginx must be there: a test that needs it fails with a clear message instead of skipping.
pub fn nginx_binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            which("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists())).unwrap_or_else(|| {
                panic!("nginx is not installed: these tests run a real nginx. Install it (apt-get install nginx) or run .ci/test, which does")
            })
        })
        .clone()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Ports below the ephemeral range, so that client connections never take a port a test is about to use.
/// Each test binary starts at its own offset; each port is checked free before it is handed out.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20000 + (std::process::id() % 50) as u16 * 240, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(p < 32700, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Opts {
    pub instances: u32,
    pub pool_size: usize,
    pub keep_previous: bool,
    pub deadline: &'static str,
    /// `deploy.verify`: short by default, so that the suite exercises the window without waiting 5 s a deploy.
    pub verify: &'static str,
    /// Extra TOML appended to the config (whole sections).
    pub extra: String,
    /// Extra lines in nginx's http block.
    pub http_extra: String,
    /// Extra lines in the server block.
    pub server_extra: String,
    /// Where the site proxies to.
    pub proxy_pass: String,
    /// Write the JSON access log that canary analysis reads (`Env::access_log`).
    pub access_log: bool,
    /// `deploy.strategy`.
    pub strategy: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            instances: 1,
            pool_size: 2,
            keep_previous: false,
            deadline: "15s",
            verify: "200ms",
            extra: String::new(),
            http_extra: String::new(),
            server_extra: String::new(),
            proxy_pass: "http://shop".into(),
            access_log: false,
            strategy: "blue-green",
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub nginx_port: u16,
    pub pool: Vec<u16>,
    pub config: PathBuf,
    pub opts: Opts,
}

impl Env {
    pub fn new() -> Env {
        Env::with(Opts::default())
    }

    pub fn with(opts: Opts) -> Env {
        let dir = tempfile::Builder::new().prefix("cutover-test-").tempdir().unwrap();
        let nginx_port = free_port();
        let pool: Vec<u16> = (0..opts.pool_size).map(|_| free_port()).collect();
        let d = dir.path().to_path_buf();
        for sub in ["nginx/logs", "nginx/conf", "state", "flags"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let env = Env { config: d.join("cutover.toml"), dir, nginx_port, pool, opts };
        std::fs::write(env.nginx_conf(), env.nginx_conf_text()).unwrap();
        std::fs::write(&env.config, env.default_config()).unwrap();
        let out = env.cutover().arg("render").output().unwrap();
        assert!(out.status.success(), "render failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(env.upstream_path(), &out.stdout).unwrap();
        start_nginx(&d.join("nginx"));
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn nginx_conf(&self) -> PathBuf {
        self.path().join("nginx/conf/nginx.conf")
    }

    pub fn access_log(&self) -> PathBuf {
        self.path().join("nginx/logs/shop.cutover.log")
    }

    pub fn upstream_path(&self) -> PathBuf {
        self.path().join("nginx/conf/shop.upstream.conf")
    }

    pub fn nginx_conf_text(&self) -> String {
        format!(
            "worker_processes 2;\npid logs/nginx.pid;\nerror_log logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    include {upstream};\n{http_extra}\n\
                 server {{\n        listen 127.0.0.1:{port};\n{access_log}{server_extra}\n\
                     location / {{ proxy_pass {proxy_pass}; }}\n    }}\n}}\n",
            upstream = self.upstream_path().display(),
            access_log = if self.opts.access_log {
                format!("        access_log {} cutover_shop;\n", self.access_log().display())
            } else {
                String::new()
            },
            proxy_pass = self.opts.proxy_pass,
            port = self.nginx_port,
            http_extra = self.opts.http_extra,
            server_extra = self.opts.server_extra,
        )
    }

    /// The config every test starts from. Per-release fixture flags come from `flags/<release>` (see `flags`).
    pub fn default_config(&self) -> String {
        let pool: Vec<String> = self.pool.iter().map(|p| p.to_string()).collect();
        format!(
            r#"[app]
name = "shop"
start = "exec python3 {fixture} --port {{{{port}}}} --release {{{{release}}}} $(cat {flags}/{{{{release}}}} 2>/dev/null)"
stop_timeout = "5s"

[ports]
pool = [{pool}]

[health]
interval = "50ms"
deadline = "{deadline}"

[nginx]
upstream_file = "nginx/conf/shop.upstream.conf"
prefix = "nginx"
conf = "conf/nginx.conf"

[deploy]
strategy = "{strategy}"
instances = {instances}
drain_timeout = "10s"
keep_previous = {keep}
state_dir = "state"
verify = "{verify}"

[runtime]
kind = "spawn"
log_dir = "logs"
{extra}"#,
            fixture = FIXTURE,
            flags = self.path().join("flags").display(),
            pool = pool.join(", "),
            deadline = self.opts.deadline,
            instances = self.opts.instances,
            strategy = self.opts.strategy,
            keep = self.opts.keep_previous,
            verify = self.opts.verify,
            extra = self.opts.extra,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Make release `release` start with these fixture flags (e.g. `--fail-health`).
    pub fn flags(&self, release: &str, flags: &str) {
        std::fs::write(self.path().join("flags").join(release), flags).unwrap();
    }

    /// The real binary, with this env's config and nothing from the caller's environment that could leak in.
    pub fn cutover(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
        c.env_remove("CUTOVER_CONFIG").arg("-c").arg(&self.config);
        c
    }

    /// Run cutover with `args`; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        outcome(self.cutover().args(args))
    }

    /// Run and insist on exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "cutover {args:?} exited {code}\nstdout:\n{out}\nstderr:\n{err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"))
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.nginx_port, path, Duration::from_secs(10))
    }

    /// The release nginx serves now (asserts a 200).
    pub fn serving(&self) -> String {
        let (status, body) = self.get("/").unwrap();
        assert_eq!(status, 200, "{body}");
        release_of(&body)
    }

    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.path().join("state/shop/state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn upstream(&self) -> String {
        std::fs::read_to_string(self.upstream_path()).unwrap()
    }

    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("nginx/logs/nginx.pid")).ok()?.trim().parse().ok()
    }

    /// Every app pid that the shop's state knows about (live, canary, previous, unfinished).
    pub fn app_pids(&self) -> Vec<i32> {
        pids_in_state(&self.path().join("state/shop/state.json"))
    }

    /// The same for every app whose state lives in this test's state dir (a test may deploy a second app).
    pub fn all_app_pids(&self) -> Vec<i32> {
        let Ok(dirs) = std::fs::read_dir(self.path().join("state")) else { return vec![] };
        dirs.flatten().flat_map(|d| pids_in_state(&d.path().join("state.json"))).collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in self.all_app_pids() {
            signal_group(pid, 9);
        }
        if let Some(pid) = self.master_pid() {
            send_signal(pid, 3);
            wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
    }
}

/// Run a command to its end: its exit code (-1 when a signal ended it), stdout and stderr.
pub fn outcome(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start the nginx whose prefix is `prefix` (its config `conf/nginx.conf`) and wait up to 5 s for its pid file
/// (`logs/nginx.pid`); returns whether it appeared.
pub fn start_nginx(prefix: &Path) -> bool {
    let st = Command::new(nginx_binary())
        .arg("-p")
        .arg(format!("{}/", prefix.display()))
        .args(["-c", "conf/nginx.conf"])
        .status()
        .unwrap();
    assert!(st.success(), "could not start the test nginx");
    let pid_file = prefix.join("logs/nginx.pid");
    wait_until(Duration::from_secs(5), || std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty()))
}

/// Every pid a state file records (live, canary, previous, rolling, unfinished, backup).
pub fn pids_in_state(path: &Path) -> Vec<i32> {
    let Ok(text) = std::fs::read_to_string(path) else { return vec![] };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return vec![] };
    let lists = [
        &v["live"]["instances"],
        &v["previous"]["instances"],
        &v["canary"]["deployment"]["instances"],
        &v["rolling"]["deployment"]["instances"],
        &v["rolling"]["down"],
        &v["in_progress"]["started"],
        &v["in_progress"]["to_stop"],
        &v["backup"],
    ];
    lists
        .iter()
        .flat_map(|l| l.as_array().into_iter().flatten())
        .filter_map(|i| i["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// Kill a process group (cutover starts each instance as the leader of its own).
pub fn signal_group(pid: i32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg("--").arg(format!("-{pid}")).status();
}

fn send_signal(pid: i32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub fn kill(pid: i32, sig: i32) {
    send_signal(pid, sig)
}

pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
            state != "Z"
        }
        Err(_) => false,
    }
}

/// The live children of an nginx master: its workers (and, for a moment after a reload, the old ones).
pub fn workers(master: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
                f.get(1) == Some(&master.to_string().as_str()) && f.first() != Some(&"Z")
            })
        })
        .collect()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// One HTTP/1.0 request (`Connection: close`), status and body.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_request(port, &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"), timeout)
}

pub fn http_request(port: u16, raw: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(raw.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no status line in {text:?}"))
        })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// POST /upload with a body sent in `chunks` pieces of 1 KiB, `pause` apart; status and body of the answer.
pub fn slow_upload(port: u16, chunks: usize, pause: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST /upload HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        chunks * 1024
    );
    s.write_all(head.as_bytes())?;
    for _ in 0..chunks {
        s.write_all(&[b'x'; 1024])?;
        std::thread::sleep(pause);
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The release named in a fixture response body.
pub fn release_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not a fixture answer ({e}): {body}"));
    v["release"].as_str().unwrap().to_string()
}

/// Files in a directory, by name.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[derive(Default, Debug)]
pub struct Tally {
    pub requests: u64,
    pub non_2xx: Vec<String>,
    pub errors: Vec<String>,
    pub releases: std::collections::BTreeMap<String, u64>,
    /// Keep-alive clients: requests whose reused connection nginx had closed before any answer (nginx < 1.27.4
    /// closes idle keep-alive connections at a reload), sent again on a new connection as HTTP clients do for
    /// idempotent requests (RFC 9112, 9.3.1).
    pub closed_idle: u64,
}

/// One HTTP/1.1 answer read from a kept-alive connection: status, headers (lower-cased names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A client on one kept-alive connection (HTTP/1.1), reconnecting when nginx closes it.
pub struct KeepAlive {
    port: u16,
    conn: Option<std::io::BufReader<TcpStream>>,
}

/// Why a request on a kept-alive connection failed.
pub enum KaError {
    /// The reused connection was closed before any byte of an answer: safe to send again.
    ClosedIdle,
    Other(String),
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive { port, conn: None }
    }

    /// GET `path`; on a reused connection that nginx closed before answering, reconnect and send it again
    /// (counted in `closed_idle`).
    pub fn get(&mut self, path: &str, closed_idle: &mut u64) -> Result<Answer, String> {
        match self.try_get(path) {
            Err(KaError::ClosedIdle) => {
                *closed_idle += 1;
                self.conn = None;
                self.try_get(path).map_err(|e| match e {
                    KaError::ClosedIdle => "a new connection was closed before any answer".to_string(),
                    KaError::Other(e) => e,
                })
            }
            Err(KaError::Other(e)) => {
                self.conn = None;
                Err(e)
            }
            Ok(a) => Ok(a),
        }
    }

    fn try_get(&mut self, path: &str) -> Result<Answer, KaError> {
        use std::io::BufRead;
        let reused = self.conn.is_some();
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| KaError::Other(e.to_string()))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            self.conn = Some(std::io::BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let idle = |e: std::io::Error| {
            if reused && matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                KaError::ClosedIdle
            } else {
                KaError::Other(e.to_string())
            }
        };
        conn.get_mut().write_all(req.as_bytes()).map_err(idle)?;
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) if reused => return Err(KaError::ClosedIdle),
            Ok(0) => return Err(KaError::Other("connection closed before an answer".into())),
            Err(e) => return Err(idle(e)),
            Ok(_) => {}
        }
        let other = |e: std::io::Error| KaError::Other(format!("reading the answer: {e}"));
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KaError::Other(format!("no status line in {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).map_err(other)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length").and_then(|l| l.parse::<usize>().ok()) {
            body.resize(len, 0);
            conn.read_exact(&mut body).map_err(other)?;
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let mut size = String::new();
                conn.read_line(&mut size).map_err(other)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(|e| KaError::Other(e.to_string()))?;
                let mut chunk = vec![0; n + 2];
                conn.read_exact(&mut chunk).map_err(other)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        if find("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok(Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// Like [`load`], with keep-alive clients: each thread keeps one connection open across requests.
pub fn load_keepalive(
    port: u16,
    clients: usize,
    max_requests: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Tally>>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let handles = (0..clients)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port);
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
                    let mut closed = 0;
                    let result = client.get("/", &mut closed);
                    let mut t = tally.lock().unwrap();
                    if t.requests >= max_requests {
                        break;
                    }
                    t.requests += 1;
                    t.closed_idle += closed;
                    match result {
                        Ok(a) if a.status == 200 => *t.releases.entry(release_of(&a.body)).or_default() += 1,
                        Ok(a) => t.non_2xx.push(format!("{}: {}", a.status, a.body.trim())),
                        Err(e) => t.errors.push(e),
                    }
                }
            })
        })
        .collect();
    (handles, tally)
}

/// Stop the keep-alive load, print what it saw, and assert every answer was a 2xx with no failed request;
/// connections nginx closed while idle (and that the client sent again) are reported, not failures.
pub fn assert_no_loss_keepalive(
    stop: &AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
    tally: &Mutex<Tally>,
    label: &str,
    min_requests: u64,
) -> std::collections::BTreeMap<String, u64> {
    let t = stop_load(stop, handles, tally);
    println!(
        "zero-loss keep-alive ({label}): {} requests, {} non-2xx, {} failed, {} idle connection(s) closed by nginx \
         and sent again; by release {:?}",
        t.requests,
        t.non_2xx.len(),
        t.errors.len(),
        t.closed_idle,
        t.releases
    );
    assert_lost_nothing(&t, min_requests, "failed requests")
}

/// Run `clients` threads sending `Connection: close` GETs through nginx until `stop` is set, or until the
/// bounds (`max_requests` in all, 180 s) are reached.
pub fn load(
    port: u16,
    clients: usize,
    max_requests: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Tally>>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let handles = (0..clients)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
                    let result = http_get(port, "/", Duration::from_secs(10));
                    let mut t = tally.lock().unwrap();
                    if t.requests >= max_requests {
                        break;
                    }
                    t.requests += 1;
                    match result {
                        Ok((200, body)) => *t.releases.entry(release_of(&body)).or_default() += 1,
                        Ok((status, body)) => t.non_2xx.push(format!("{status}: {}", body.trim())),
                        Err(e) => t.errors.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    (handles, tally)
}

/// Stop the load started by [`load`], print what it saw under `label`, and assert that nothing was lost: every
/// answer a 2xx, no failed connection, and more than `min_requests` sent. Returns the answers by release.
pub fn assert_no_loss(
    stop: &AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
    tally: &Mutex<Tally>,
    label: &str,
    min_requests: u64,
) -> std::collections::BTreeMap<String, u64> {
    let t = stop_load(stop, handles, tally);
    println!(
        "zero-loss ({label}): {} requests, {} non-2xx, {} connection errors; by release {:?}",
        t.requests,
        t.non_2xx.len(),
        t.errors.len(),
        t.releases
    );
    assert_lost_nothing(&t, min_requests, "failed connections")
}

/// Stop the clients of a load and wait for them: what they counted.
fn stop_load<'a>(
    stop: &AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
    tally: &'a Mutex<Tally>,
) -> std::sync::MutexGuard<'a, Tally> {
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    tally.lock().unwrap()
}

/// More than `min_requests` sent, every answer a 2xx, no failed request (`failed` names them in the message).
/// Returns the answers by release.
fn assert_lost_nothing(t: &Tally, min_requests: u64, failed: &str) -> std::collections::BTreeMap<String, u64> {
    assert!(t.requests > min_requests, "the clients sent too little to mean anything: {}", t.requests);
    assert!(t.non_2xx.is_empty(), "non-2xx answers: {:?}", &t.non_2xx[..t.non_2xx.len().min(10)]);
    assert!(t.errors.is_empty(), "{failed}: {:?}", &t.errors[..t.errors.len().min(10)]);
    t.releases.clone()
}
