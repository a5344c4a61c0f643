//! The cutover.toml `init --adopt` writes: the pool, the health check and the start command taken from what
//! runs, nginx's files as found, and `deploy.keep_previous = true` (what the switch.sh pattern did: the previous
//! copy stays up, so a rollback is a flip). Pure.

use std::path::{Path, PathBuf};

/// What the config says, as adoption found it.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub name: String,
    /// The start command derived from the live process, and whether its port appeared in it.
    pub start: String,
    pub port_in_command: bool,
    /// The live process: pid and command line, for the comment.
    pub from_pid: i32,
    pub from_command: String,
    pub workdir: Option<PathBuf>,
    /// The account the live process runs as, when it is not the one running cutover.
    pub runs_as: Option<String>,
    pub pool: Vec<u16>,
    pub bind: String,
    pub health_path: String,
    pub upstream_file: PathBuf,
    pub nginx_prefix: Option<PathBuf>,
    pub nginx_conf: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// One line saying how nginx reached the app, for the comment.
    pub via: String,
    pub release: String,
    pub at: String,
}

/// A TOML string.
fn s(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

fn p(v: &Path) -> String {
    s(&v.display().to_string())
}

pub fn render(a: &Adopted) -> String {
    let pool: Vec<String> = a.pool.iter().map(|p| p.to_string()).collect();
    let mut t = String::new();
    t.push_str(&format!(
        "# cutover.toml for {name}, written by `cutover init --adopt` at {at} from what ran on this host:\n\
         #   nginx: {via}\n\
         #   pid {pid} listened there, recorded as release {release}, the live one.\n\
         # Unknown keys are errors; durations are human (250ms, 30s, 5m).\n\n",
        name = a.name,
        at = a.at,
        via = a.via,
        pid = a.from_pid,
        release = a.release,
    ));
    t.push_str(&format!("[app]\nname = {}\n", s(&a.name)));
    t.push_str(&format!(
        "# Taken from the command line of pid {}:\n#   {}\n",
        a.from_pid,
        a.from_command.replace('\n', " ")
    ));
    if a.port_in_command {
        t.push_str("# {{port}} and {{release}} are substituted; PORT and CUTOVER_RELEASE are in its environment.\n");
    } else {
        t.push_str(
            "# CHECK THIS: the port does not appear on that command line (a profile or properties file sets it).\n\
             # cutover starts each release on a pool port it picks: make the app listen on {{port}} (Spring Boot:\n\
             # --server.port={{port}}), or on $PORT, which is in its environment.\n",
        );
    }
    t.push_str("# Put {{release}} where each release's files are (or set app.release_dir).\n");
    t.push_str(
        "# Its environment is not copied: cutover gives the app a clean one (PATH, LANG, HOME); put what it needs\n\
         # in app.env or, for secrets, app.env_file.\n",
    );
    t.push_str(&format!("start = {}\n", s(&a.start)));
    if let Some(w) = &a.workdir {
        t.push_str(&format!("workdir = {}\n", p(w)));
    }
    if let Some(u) = &a.runs_as {
        t.push_str(&format!("# The adopted process runs as {u}: start releases as that account too.\n"));
    }
    t.push_str("stop_timeout = \"30s\"\n\n");
    t.push_str(&format!(
        "[ports]\npool = [{}]                # the live port and the idle copy's, as switch.sh alternated them\nbind = {}\n\n",
        pool.join(", "),
        s(&a.bind)
    ));
    t.push_str(&format!(
        "[health]\npath = {}\nexpect_status = 200\ninterval = \"250ms\"\ntimeout = \"2s\"\ndeadline = \"60s\"\nsuccesses = 2\n\n",
        s(&a.health_path)
    ));
    t.push_str(&format!(
        "[nginx]\n# Included in nginx's http context by `init --adopt`; the site proxies to the upstream {} it defines.\n\
         upstream_file = {}\n",
        a.name,
        p(&a.upstream_file)
    ));
    if let Some(pr) = &a.nginx_prefix {
        t.push_str(&format!("prefix = {}\n", p(pr)));
    }
    if let Some(c) = &a.nginx_conf {
        t.push_str(&format!("conf = {}\n", p(c)));
    }
    t.push_str("# reload = \"signal\"               # or \"systemctl\"; as a non-root user see `run_as_root` in `cutover init`'s config\n\n");
    t.push_str(&format!(
        "[deploy]\nstrategy = \"blue-green\"\ninstances = 1\ndrain_timeout = \"30s\"\n\
         keep_previous = true               # as switch.sh did: the previous release stays up, idle, and a rollback is a flip\n\
         state_dir = {}\n",
        p(&a.state_dir)
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_loads_and_says_where_it_came_from() {
        let a = Adopted {
            name: "shop".into(),
            start: "java -jar app.jar --server.port={{port}}".into(),
            port_in_command: true,
            from_pid: 4121,
            from_command: "java -jar app.jar --server.port=8081".into(),
            workdir: Some("/home/ec2-user/app".into()),
            runs_as: Some("ec2-user".into()),
            pool: vec![8081, 8082],
            bind: "127.0.0.1".into(),
            health_path: "/profile".into(),
            upstream_file: "/etc/nginx/cutover/shop.upstream.conf".into(),
            nginx_prefix: None,
            nginx_conf: None,
            state_dir: "/var/lib/cutover".into(),
            via: "proxy_pass $service_url, with `set $service_url http://127.0.0.1:8081;`".into(),
            release: "adopted-8081".into(),
            at: "2026-11-30T12:00:00Z".into(),
        };
        let text = render(&a);
        let cfg = crate::config::Config::parse(&text, Path::new("/etc/cutover/shop.toml")).unwrap();
        assert_eq!(cfg.pool(), [8081, 8082]);
        assert!(cfg.deploy.keep_previous);
        assert_eq!(cfg.health.path.0, "/profile");
        assert!(
            text.contains("#   pid 4121 listened there, recorded as release adopted-8081, the live one.\n"),
            "{text}"
        );
        assert!(!text.contains("CHECK THIS"));
        let text = render(&Adopted { port_in_command: false, ..a });
        assert!(text.contains("# CHECK THIS: the port does not appear"), "{text}");
    }
}
