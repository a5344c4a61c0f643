//! `cutover check` on the host problems that let a deploy "succeed" while no user reaches the new release, or
//! fail a deploy for a reason nobody would guess: another server block that takes the site's requests, a
//! running nginx that kept an older config, pool ports in the kernel's ephemeral range; and what is not a
//! problem: TIME-WAIT sockets on pool ports, an empty pid file (nginx is just not running). Real binary, real
//! nginx, real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The check item line for `name` in `check`'s text output, and its fix line when there is one.
fn item<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = out.lines().collect();
    let Some(i) = lines.iter().position(|l| l.get(5..).is_some_and(|r| r.starts_with(&format!("{name:<18} ")))) else {
        panic!("no {name} item in:\n{out}")
    };
    let fix = format!("{:24}fix: ", "");
    lines[i..].iter().take(2).enumerate().filter(|(k, l)| *k == 0 || l.starts_with(&fix)).map(|(_, l)| *l).collect()
}

/// The 1-based line of the first line of `text` containing `what`.
fn line_of(text: &str, what: &str) -> usize {
    text[..text.find(what).unwrap()].matches('\n').count() + 1
}

/// SIGHUP the env's nginx and wait until its workers are all new ones (the reload took).
fn reload(env: &Env) {
    let master = env.master_pid().unwrap();
    // A master that has just started may not have its first workers yet.
    assert!(wait_until(Duration::from_secs(10), || !workers(master).is_empty()));
    let old = workers(master);
    kill(master, 1);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = workers(master);
            !now.is_empty() && now.iter().all(|w| !old.contains(w))
        }),
        "nginx did not reload"
    );
}

#[test]
fn a_site_that_loses_its_requests_to_another_server_block_fails_with_the_fix() {
    // A default server on the site's address, before it, and the site with no name: Debian's layout.
    let other = |names: &str| {
        format!("    server {{\n        listen 127.0.0.1:{{PORT}} default_server;\n        server_name {names};\n        return 200 \"Welcome to nginx!\";\n    }}\n")
    };
    let env = Env::with(Opts { http_extra: "#OTHER".into(), ..Opts::default() });
    let conf = env.nginx_conf_text().replace("#OTHER", &other("_").replace("{PORT}", &env.nginx_port.to_string()));
    std::fs::write(env.nginx_conf(), &conf).unwrap();
    reload(&env);
    assert_eq!(env.get("/").unwrap(), (200, "Welcome to nginx!".to_string()), "the default server answers");
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    let conf_path = env.nginx_conf().display().to_string();
    let (other_line, ours_line) =
        (line_of(&conf, "default_server") - 1, line_of(&conf, &format!("listen 127.0.0.1:{};", env.nginx_port)) - 1);
    assert_eq!(
        item(&out, "site"),
        [
            format!(
                "FAIL site               the server block at {conf_path}:{ours_line} (listen 127.0.0.1:{p}; server_name \"\"): \
                 the site has no server_name a request can match (only `_` or none), so it gets requests on \
                 127.0.0.1:{p} only as the default server, and the default server there is the server block at \
                 {conf_path}:{other_line} (listen 127.0.0.1:{p}; server_name _) (default_server)",
                p = env.nginx_port
            )
            .as_str(),
            "                        fix: give the site the name users reach it by (`server_name shop.example.com;`; \
             `cutover init --server-name` writes it), or take the default away from the other block (Debian: rm \
             /etc/nginx/sites-enabled/default); then nginx -t and reload nginx",
        ]
    );
    assert!(out.contains("ok   nginx -t "), "nginx itself accepts this config: {out}");

    // The site gets its name: requests for it reach the app, and check is satisfied.
    let named = conf.replace("location / { proxy_pass", "server_name shop.test;\n        location / { proxy_pass");
    assert_ne!(named, conf);
    std::fs::write(env.nginx_conf(), &named).unwrap();
    reload(&env);
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(item(&out, "site")[0].starts_with("ok   site               the server block at "), "{out}");

    // The other block claims the same name, and comes first: it takes the name.
    let taken = named.replace("server_name _;", "server_name _ shop.test;");
    std::fs::write(env.nginx_conf(), &taken).unwrap();
    reload(&env);
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    let lines = item(&out, "site");
    assert!(
        lines[0].contains(&format!(
            "server_name shop.test on 127.0.0.1:{} is taken by the server block at {conf_path}:{other_line}",
            env.nginx_port
        )),
        "{out}"
    );
    assert!(
        lines[1].ends_with("fix: remove the name from one of the two server blocks, then nginx -t and reload nginx")
    );
}

#[test]
fn a_reload_that_nginx_refused_on_a_busy_listen_is_caught() {
    let env = Env::new();
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(item(&out, "nginx config")[0].contains("run the files on disk: none changed since"), "{out}");
    // A second listen on a port something else holds: nginx -t passes (it binds nothing), the reload is
    // refused by the running master, which keeps its old config and says so only in its error log.
    std::thread::sleep(Duration::from_millis(1100));
    let busy = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let conf = env.nginx_conf_text().replace(
        &format!("listen 127.0.0.1:{};", env.nginx_port),
        &format!("listen 127.0.0.1:{};\n        listen 127.0.0.1:{busy_port};", env.nginx_port),
    );
    std::fs::write(env.nginx_conf(), conf).unwrap();
    let master = env.master_pid().unwrap();
    let before = workers(master);
    kill(master, 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(workers(master), before, "the reload was refused: the same workers run");
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("ok   nginx -t "), "{out}");
    assert!(out.contains("ok   nginx running "), "{out}");
    let lines = item(&out, "nginx config");
    assert!(
        lines[0].starts_with(&format!("FAIL nginx config       nginx master {master} runs workers started ")),
        "{out}"
    );
    assert!(lines[0].contains(&format!("but {} changed ", env.nginx_conf().display())), "{out}");
    assert!(
        lines[0].ends_with(
            " later: the running nginx has not loaded it (a reload that failed, for one on a listen port in use, keeps \
             the old config)"
        ),
        "{out}"
    );
    assert!(lines[1].contains("fix: run nginx -t, then reload nginx"), "{out}");
    // Free the port and reload: the master takes the config, and check agrees.
    drop(busy);
    reload(&env);
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn with_a_confirm_url_the_generation_nginx_serves_is_compared_with_the_file() {
    let endpoint =
        "        location = /.cutover { allow 127.0.0.1; deny all; return 200 \"$cutover_shop_generation\\n\"; }\n";
    let env = Env::with(Opts { server_extra: endpoint.into(), ..Opts::default() });
    let url = format!("http://127.0.0.1:{}/.cutover", env.nginx_port);
    env.write_config(&env.default_config().replace("[nginx]\n", &format!("[nginx]\nconfirm_url = \"{url}\"\n")));
    env.ok(&["deploy", "--release", "v1"]);
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        item(&out, "nginx config")[0].ends_with(&format!("; {url} answers generation 1, as the upstream file says")),
        "{out}"
    );
}

#[test]
fn pool_ports_in_the_ephemeral_range_fail_and_time_wait_sockets_do_not_count_as_busy() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let lo: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let env = Env::new();
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        item(&out, "ephemeral ports")[0].starts_with("ok   ephemeral ports    no pool port is one outgoing"),
        "{out}"
    );
    // One pool port inside the range (and not reserved on this machine).
    let inside = (lo + 2000..lo + 4000).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()).unwrap();
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    assert!(reserved.trim().is_empty(), "this test expects no reserved ports; found {reserved}");
    env.write_config(
        &env.default_config().replace(&format!("pool = [{}, ", env.pool[0]), &format!("pool = [{inside}, ")),
    );
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert_eq!(
        item(&out, "ephemeral ports"),
        [
            format!(
                "FAIL ephemeral ports    pool port(s) {inside} are inside net.ipv4.ip_local_port_range {}: any outgoing \
                 connection may hold one when a deploy needs it",
                range.split_whitespace().collect::<Vec<_>>().join("-")
            )
            .as_str(),
            &format!(
                "                        fix: move ports.pool below {lo}, or reserve them: sysctl -w \
                 net.ipv4.ip_local_reserved_ports={inside} (and put it in /etc/sysctl.d/ to keep it after a reboot)"
            ),
        ]
    );
    env.write_config(&env.default_config());

    // TIME-WAIT on a pool port: the side that closes first keeps its end in TIME-WAIT for a minute.
    let port = env.pool[1];
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"bye").unwrap();
        drop(s); // the server end (local port = the pool port) closes first
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        clients.push(c);
    }
    drop(clients);
    drop(listener);
    let hex = format!(":{port:04X} ");
    let tw = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| format!("{a} ").contains(&hex)) && f.get(3) == Some(&"06")
        })
        .count();
    assert!(tw >= 3, "expected TIME-WAIT sockets on port {port}, found {tw}");
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    let ports = item(&out, "ports")[0];
    assert!(ports.starts_with("ok   ports              2 of 2 pool port(s) free on 127.0.0.1; "), "{out}");
    assert!(ports.contains(" TIME-WAIT socket(s) on pool ports, counted free: they do not stop a bind"), "{out}");
    // And a deploy takes that port: the app binds it with SO_REUSEADDR.
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(env.state()["live"]["instances"][0]["port"], port);
    assert_eq!(env.serving(), "v2");
}

#[test]
fn an_empty_pid_file_is_nginx_not_running() {
    let env = Env::new();
    let master = env.master_pid().unwrap();
    let prefix = format!("{}/", env.path().join("nginx").display());
    let st =
        Command::new(nginx_binary()).args(["-p", &prefix, "-c", "conf/nginx.conf", "-s", "quit"]).status().unwrap();
    assert!(st.success());
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(master)), "nginx did not quit");
    // `nginx -t` creates the pid file, empty, when nginx is not running (what a user saw after it).
    let t = Command::new(nginx_binary()).args(["-p", &prefix, "-c", "conf/nginx.conf", "-t", "-q"]).output().unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let pid_file = env.path().join("nginx/logs/nginx.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "", "nginx -t left an empty pid file");
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert_eq!(
        item(&out, "nginx running"),
        [
            format!(
                "FAIL nginx running      nginx is not running: its pid file {} is empty; start nginx",
                pid_file.display()
            )
            .as_str(),
            "                        fix: start nginx (systemctl start nginx), or set nginx.pid_file to the running \
             master's pid file",
        ]
    );
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("nginx is not running: its pid file"), "{err}");
}
