//! The sudoers rule a non-root deploy user needs: exactly the commands cutover runs as root through
//! `nginx.run_as_root`, with their arguments, so that the user gets nothing else (sudoers matches a command
//! with arguments exactly). `cutover init` writes it as a comment; `cutover check` shows it when it is missing.

use crate::config;
use crate::nginx::RealNginx;

/// One command as sudoers spells it: `,` `:` `=` `\` and spaces inside arguments escaped.
fn spell(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let mut s = String::new();
            for c in a.chars() {
                if matches!(c, ',' | ':' | '=' | '\\' | ' ') {
                    s.push('\\');
                }
                s.push(c);
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `USER ALL=(root) NOPASSWD: CMD, CMD, CMD` for these commands.
pub fn rule(user: &str, commands: &[Vec<String>]) -> String {
    let cmds: Vec<String> = commands.iter().filter(|c| !c.is_empty()).map(|c| spell(c)).collect();
    format!("{user} ALL=(root) NOPASSWD: {}", cmds.join(", "))
}

/// The rule for the nginx commands of this `[nginx]` config.
pub fn nginx_rule(user: &str, nginx: &config::Nginx) -> String {
    rule(user, &RealNginx::new(nginx, None).root_commands())
}

/// What `check` says to do when `nginx -t` fails for a non-root user; `None` as root.
pub fn nginx_t_fix(cfg: &config::Config) -> Option<String> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        return None;
    }
    let user = crate::trust::user_name(euid);
    let rule = nginx_rule(&user, &cfg.nginx);
    Some(match &cfg.nginx.run_as_root {
        None => format!(
            "as a non-root user, nginx -t needs root (it opens nginx's pid file and logs): set nginx.run_as_root = \
             [\"sudo\", \"-n\"] and allow exactly these commands in /etc/sudoers.d/cutover (visudo -f \
             /etc/sudoers.d/cutover): {rule}"
        ),
        Some(prefix) => format!(
            "if {} refused, allow exactly these commands in /etc/sudoers.d/cutover (visudo -f \
             /etc/sudoers.d/cutover): {rule}; otherwise fix nginx's config until `nginx -t` passes",
            prefix[0]
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_listed_exactly_and_escaped() {
        let cmds = vec![
            vec!["/usr/sbin/nginx".to_string(), "-t".into(), "-q".into()],
            vec!["/usr/sbin/nginx".to_string(), "-p".into(), "/srv/a,b/".into(), "-s".into(), "reload".into()],
        ];
        assert_eq!(
            rule("deploy", &cmds),
            "deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t -q, /usr/sbin/nginx -p /srv/a\\,b/ -s reload"
        );
    }
}
