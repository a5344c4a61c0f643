//! `cutover init`: a commented cutover.toml and an nginx site file that includes the upstream file.

use std::path::Path;

use anyhow::Result;

use crate::cli::InitArgs;
use crate::config::Name;
use crate::exit::{self, Code};
use crate::nginx::{has_keepalive_min_timeout, RealNginx};

use super::init_names;

pub fn run(config_path: &Path, args: InitArgs) -> Result<Code> {
    if args.adopt {
        return super::adopt::run(config_path, args);
    }
    let name: Name = args.name.parse().map_err(exit::usage)?;
    for p in [config_path, args.site.as_path()] {
        if p.exists() && !args.force {
            return Err(exit::usage(format!("{} exists; pass --force to overwrite it", p.display())));
        }
    }
    let (server_names, source) = init_names::server_names(&args.server_name)?;
    let mut root_nginx = default_nginx();
    root_nginx.run_as_root = Some(vec!["sudo".into(), "-n".into()]);
    let config =
        CONFIG.replace("SUDOERS", &crate::sudoers::nginx_rule("deploy", &root_nginx)).replace("NAME", name.as_str());
    let site = SITE
        .replace("SERVERNAME", &server_names.join(" "))
        .replace("KEEPALIVE", &keepalive_line())
        .replace("VAR", &crate::upstream::Names::for_app(name.as_str()).vars)
        .replace("NAME", name.as_str());
    // The config may come to hold app.env values: not world-readable. The site file is nginx's to read.
    crate::trust::write_with_mode(config_path, config.as_bytes(), 0o640)?;
    crate::trust::write_with_mode(&args.site, site.as_bytes(), 0o644)?;
    say!("wrote {} and {}", config_path.display(), args.site.display());
    if source == init_names::Source::Fqdn {
        say!(
            "the site's server_name is this host's name, {}; if users reach the app by another name, run again with \
             --server-name NAME --force",
            server_names[0]
        );
    }
    if let Some(note) = init_names::default_site_note(Path::new("/etc/nginx/sites-enabled")) {
        say!("note: {note}");
    }
    say!("next: edit app.start, then");
    say!("      mkdir -p /etc/nginx/cutover && cutover render > /etc/nginx/cutover/{name}.upstream.conf");
    say!("      cp {} /etc/nginx/sites-enabled/{name} && nginx -t && systemctl reload nginx", args.site.display());
    say!("      cutover check");
    Ok(Code::Ok)
}

/// `cutover init --boot`: write `cutover-<app>-up.service` into `runtime.unit_dir` and enable it (its
/// `WantedBy` symlink), a oneshot that runs `cutover up` for this config after nginx at boot. It matches the
/// packaged `cutover-up@.service` template (`systemctl enable cutover-up@APP`), for hosts without the package.
pub fn boot(setup: &super::Setup) -> Result<Code> {
    let c = &setup.config;
    let name = format!("cutover-{}-up.service", c.app.name);
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("could not find the cutover binary: {e}"))?;
    let config = std::path::absolute(&c.path).unwrap_or_else(|_| c.path.clone());
    let text = boot_unit(c.app.name.as_str(), &exe, &config);
    let dir = &c.runtime.unit_dir;
    std::fs::create_dir_all(dir.join("multi-user.target.wants"))
        .map_err(|e| anyhow::anyhow!("could not create {}: {e}", dir.join("multi-user.target.wants").display()))?;
    let path = dir.join(&name);
    crate::util::write_atomic(&path, text.as_bytes(), 0o644)?;
    let link = dir.join("multi-user.target.wants").join(&name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&path, &link)
            .map_err(|e| anyhow::anyhow!("could not enable {name} ({}): {e}", link.display()))?;
    }
    say!("wrote {} and enabled it ({})", path.display(), link.display());
    let (kind, _) = crate::host::select::choose(c);
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() == "systemd" {
        match crate::host::systemd::Systemd::new(c).systemctl(&["daemon-reload"]) {
            Ok(_) => {
                say!("systemd reloaded: at the next boot it runs `cutover -c {} up` after nginx", config.display())
            }
            Err(e) => say!("run `systemctl daemon-reload` ({e:#})"),
        }
    } else {
        say!("PID 1 here is not systemd: the unit takes effect where systemd reads {}", dir.display());
    }
    if kind == crate::config::RuntimeKind::Systemd {
        say!("note: with the systemd runtime the live units come back at boot by themselves; this unit also restarts units that failed and fixes moved ports");
    }
    Ok(Code::Ok)
}

/// The boot unit's text.
pub fn boot_unit(app: &str, exe: &Path, config: &Path) -> String {
    format!(
        "# cutover-{app}-up.service: at boot, make what cutover recorded as live for {app} true again (`cutover up`:\n\
         # start the live release's instances, health-check them, render the upstream and reload nginx).\n\
         # Written by `cutover init --boot`; the cutover package's `systemctl enable cutover-up@{app}` is the same.\n\
         [Unit]\n\
         Description=cutover: bring app {app}'s live release back up\n\
         After=network-online.target nginx.service\n\
         Wants=network-online.target nginx.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         # The app's instances outlive this command (spawn runs them in their own sessions): the unit stays active\n\
         # so that systemd does not clean them up when `up` exits, and KillMode=process keeps a `systemctl stop`\n\
         # or `restart` of this unit from stopping the app. Take the app down with `cutover stop`.\n\
         RemainAfterExit=yes\n\
         KillMode=process\n\
         ExecStart=\"{exe}\" -c \"{config}\" up\n\
         WorkingDirectory=/\n\
         # Health checks run inside `up` (health.deadline per instance).\n\
         TimeoutStartSec=10min\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exe = exe.display().to_string().replace('%', "%%"),
        config = config.display().to_string().replace('%', "%%"),
    )
}

/// nginx resets idle keep-alive client connections at a reload unless `keepalive_min_timeout` (nginx 1.27.4 and
/// later) keeps them; write it when this host's nginx has it, and say why not otherwise.
fn keepalive_line() -> String {
    match RealNginx::new(&default_nginx(), None).version() {
        Ok(v) if has_keepalive_min_timeout(v) => {
            "    # Idle keep-alive clients are not reset at a reload (nginx >= 1.27.4).\n    keepalive_min_timeout 1s;"
                .into()
        }
        Ok((a, b, c)) => format!(
            "    # nginx {a}.{b}.{c} may reset idle keep-alive clients at a reload; from 1.27.4 add `keepalive_min_timeout 1s;`."
        ),
        Err(_) => "    # From nginx 1.27.4, `keepalive_min_timeout 1s;` keeps a reload from resetting idle keep-alive clients."
            .into(),
    }
}

/// The `[nginx]` section init writes, as a config: the system nginx, reloaded by signal.
fn default_nginx() -> crate::config::Nginx {
    crate::config::Nginx {
        upstream_file: Default::default(),
        binary: "nginx".into(),
        prefix: None,
        conf: None,
        pid_file: None,
        reload: Default::default(),
        template: None,
        confirm_url: None,
        confirm_timeout: crate::config::Positive(std::time::Duration::from_secs(5)),
        run_as_root: None,
    }
}

const CONFIG: &str = r#"# cutover.toml: how cutover deploys NAME. Unknown keys are errors; durations are human (250ms, 30s, 5m).

[app]
name = "NAME"                      # [a-z0-9_-]; names the upstream, the state dir and the log files
# {{port}} and {{release}} are substituted; PORT, CUTOVER_RELEASE and CUTOVER_APP are in the app's environment.
start = "/srv/NAME/releases/{{release}}/bin/server --port {{port}}"
# workdir = "/srv/NAME/releases/{{release}}"   # default: the directory cutover runs from (/ at boot: set it)
# The app's environment is clean: PATH, LANG, HOME, what inherit_env names, env, env_file, then PORT,
# CUTOVER_APP, CUTOVER_RELEASE. Nothing else of the deploying job's environment reaches it.
# env = { RAILS_ENV = "production" }   # not for secrets: cutover init writes this file 0640
# env_file = "/etc/NAME/env"       # KEY=VALUE lines, owned by root (or you) and mode 0600: secrets go here
# inherit_env = ["JAVA_HOME"]      # passed through from cutover's environment
# user = "NAME"                    # run the app as this user (cutover runs as root); group = "NAME"
stop_timeout = "30s"               # SIGTERM, then SIGKILL after this

[ports]
pool = [8081, 8082]                # or range = "8081-8090"; `cutover check` says how many each strategy needs
bind = "127.0.0.1"

[health]
path = "/health"
expect_status = 200
# expect_body = "UP"               # optional substring
interval = "250ms"
timeout = "2s"
deadline = "60s"
successes = 2

[nginx]
# Outside conf.d/ on purpose: nginx.conf already includes conf.d/*.conf, and the site file includes this one.
upstream_file = "/etc/nginx/cutover/NAME.upstream.conf"
# binary = "nginx"
# prefix = "/opt/nginx"  conf = "conf/nginx.conf"   (a private nginx: nginx -p PREFIX -c CONF; conf relative to prefix)
# pid_file = "/run/nginx.pid"     (found from nginx's config when absent)
# reload = "signal"               # or "systemctl", or ["sudo", "nginx", "-s", "reload"]
# A non-root deploy user (`deploy` below) runs nginx -t, nginx -T and the reload as root through sudo:
# run_as_root = ["sudo", "-n"]
# with exactly these commands allowed in /etc/sudoers.d/cutover (edit it with visudo -f /etc/sudoers.d/cutover):
#   SUDOERS
# and the upstream file's directory and the state directory its own: install -d -o deploy /etc/nginx/cutover /var/lib/cutover
# template = "upstream.conf.tera" # override the built-in upstream template
# Confirm each reload end to end: the site file's `location = /.cutover` (loopback only) answers the generation
# of the upstream file nginx runs. Set this to a URL that reaches that server block from this host, e.g.
# confirm_url = "http://127.0.0.1/.cutover"   (only when the site is the default server of port 80: a request
#                                             to 127.0.0.1 carries no server_name of the site)

[deploy]
strategy = "blue-green"
instances = 1
drain_timeout = "30s"              # longest wait for nginx's old workers before stopping the old release
keep_previous = false              # true: keep the previous release running idle for a sub-second rollback
# One state for every user that runs cutover (without it, root uses /var/lib/cutover and other users
# ~/.local/state/cutover, and `sudo cutover rollback` would act on another state than the CI user's deploys).
state_dir = "/var/lib/cutover"

[canary]                           # `cutover deploy --strategy canary`
steps = [10, 25, 50, 100]          # percent of traffic to the new release, one reload per step
interval = "60s"                   # hold per step with analysis; "manual": stop after the first step (promote/abort)
max_error_rate = 0.01              # abort (exit 6) when the canary's 5xx rate is above this...
min_requests = 50                  # ...once it has at least this many requests in the step
# max_latency_factor = 2.0         # abort when the canary's p95 upstream time exceeds the stable one's by this
# sticky = "cookie:session"        # or "ip": each user stays on one release (site must proxy_pass the variable)
# header = "X-Canary"              # requests carrying this header always go to the canary
access_log = "/var/log/nginx/NAME.cutover.log"   # written by the site file's access_log line

[runtime]
# Who keeps the app running. "systemd" (the default where PID 1 is systemd): each instance is a unit
# cutover-NAME@PORT.service that restarts on failure and comes back at boot; output in the journal.
# "spawn": cutover starts instances itself; output in log_dir; `cutover init --boot` adds a boot unit.
# kind = "systemd"
# unit_dir = "/etc/systemd/system"
# A deploy user that is not root runs systemctl and journalctl through sudo, and needs write access to unit_dir
# (both amount to root on this host). The sudoers line, e.g. in /etc/sudoers.d/cutover-NAME:
#   deploy ALL=(root) NOPASSWD: /usr/bin/systemctl, /usr/bin/journalctl
# systemctl = ["sudo", "systemctl"]
# journalctl = ["sudo", "journalctl"]
# log_dir = "/var/log/cutover/NAME"   # spawn: <release>-<port>.log per instance
# log_max_size = "10MiB"           # spawn: rotate each file at this size...
# log_keep = 3                     # ...keeping this many rotated files

# [rolling]                        # `cutover deploy --strategy rolling` (deploy.instances replaced in batches)
# batch = 1                        # instances per batch
# surge = true                     # replacements start beside the old ones (needs instances + batch ports)
# pause = "0s"                     # hold between batches with the canary's access-log analysis
# on_failure = "rollback"          # or "pause": keep the mixed fleet for rollback/recover/deploy

# [maintenance]                    # `--strategy all-at-once` (not zero-downtime): nginx answers 503 meanwhile
# retry_after = "5s"

[hooks]                            # shell commands; CUTOVER_* variables describe the deploy
# before_start = "..."
# after_healthy = "..."            # a failure here aborts the deploy before traffic moves (exit 3)
# after_switch = "..."
# after_rollback = "..."
# on_failure = "..."
"#;

const SITE: &str = r#"# nginx site for NAME, written by `cutover init`. Put it in nginx's http context
# (Debian: /etc/nginx/sites-enabled/NAME; RHEL: /etc/nginx/conf.d/NAME.conf). The upstream `NAME` lives in the
# file cutover manages, kept out of conf.d/ so that nginx.conf's `include conf.d/*.conf` does not load it twice.
include /etc/nginx/cutover/NAME.upstream.conf;

server {
    listen 80;
    # The name users reach the app by. A site without one gets requests only as the default server of port 80,
    # which on Debian is sites-enabled/default ("Welcome to nginx!").
    server_name SERVERNAME;
KEEPALIVE
    # One JSON line per request (format defined in the upstream file): cutover's canary analysis reads it.
    access_log /var/log/nginx/NAME.cutover.log cutover_NAME;

    # The generation of the upstream file nginx runs, for nginx.confirm_url: cutover confirms each reload by it.
    # Loopback only. allow/deny act in nginx's access phase, which comes after `return` would already have
    # answered, so the answer comes from a named location that try_files reaches once access is granted.
    location = /.cutover {
        allow 127.0.0.1;
        allow ::1;
        deny all;
        try_files /.cutover-generation-not-a-file @VAR_generation;
    }
    location @VAR_generation {
        default_type text/plain;
        return 200 "$VAR_generation\n";
    }

    location / {
        # With canary.sticky or canary.header, proxy to the variable instead: proxy_pass http://$VAR_upstream;
        proxy_pass http://NAME;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        # Retry another server only for requests that cannot have reached the app.
        proxy_next_upstream error timeout;
    }
}
"#;
