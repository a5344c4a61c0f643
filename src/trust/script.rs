//! Which files a command line runs: a hook's `/srv/hooks/notify.sh`, or the script in `sh /srv/x.sh`.
//!
//! The hook's text is in the config, which is checked itself; what the config cannot vouch for is a script
//! file it names, so those files are checked like the config. The shell is not emulated, only read enough to
//! find them, in each command of the line (`a; b && c | d`):
//! - leading `NAME=value` words and the prefixes `exec`, `command`, `nohup`, `env` (with its options and
//!   assignments) are skipped;
//! - the command word, when it contains a `/` (a word without one is looked up on `PATH`, which is the
//!   environment's, as for sudo's `secure_path`);
//! - for an interpreter (`sh`, `bash`, `python3`, `perl`, `node`, `.`, `source`, ...) the first argument that is
//!   not an option, unless an option says the code is inline (`sh -c`, `python3 -c`/`-m`, `perl -e`).
//!
//! A word the shell would expand (`$DIR/x.sh`, `~/x.sh`, globs) cannot be checked before it runs and is skipped;
//! so are redirection targets. Relative paths are taken from the directory the command runs in.

use std::path::{Path, PathBuf};

/// The script files the shell command line `line` would run, resolved against `base`.
pub fn in_shell_line(line: &str, base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for words in simple_commands(line) {
        for p in in_argv(&words, base) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The script files an argv would run (`None` words are ones the shell would expand).
pub fn in_argv(words: &[Option<String>], base: &Path) -> Vec<PathBuf> {
    let mut i = 0;
    // Prefixes that run the next word.
    while let Some(Some(w)) = words.get(i) {
        if is_assignment(w)
            || matches!(w.as_str(), "exec" | "command" | "nohup" | "time" | "!" | "then" | "do" | "else" | "{")
        {
            i += 1;
        } else if let Some(takes_arg) = wrapper(w) {
            // `timeout 60 x`, `nice -n 10 x`, `setsid x`: options (and their arguments), then the command.
            let positional = usize::from(w == "timeout");
            i += 1;
            let mut seen = 0;
            while let Some(Some(w)) = words.get(i) {
                if w.starts_with('-') && w.len() > 1 {
                    i += if takes_arg(w) { 2 } else { 1 };
                } else if seen < positional {
                    seen += 1;
                    i += 1;
                } else {
                    break;
                }
            }
        } else if w == "env" {
            i += 1;
            while let Some(Some(w)) = words.get(i) {
                if w.starts_with('-') || is_assignment(w) {
                    i += 1;
                } else {
                    break;
                }
            }
        } else {
            break;
        }
    }
    let Some(Some(cmd)) = words.get(i) else { return Vec::new() };
    let mut out = Vec::new();
    if cmd.contains('/') {
        out.push(base.join(cmd));
    }
    let name = cmd.rsplit('/').next().unwrap_or(cmd);
    let Some(inline) = interpreter(name) else { return out };
    let mut rest = words[i + 1..].iter();
    while let Some(w) = rest.next() {
        let Some(w) = w else { break };
        if w == "--" {
            continue;
        }
        // A shell's `+x` / `+o name` turn options off: options all the same.
        let opts = w.strip_prefix('-').or_else(|| w.strip_prefix('+').filter(|_| is_shell(name)));
        if let Some(opts) = opts {
            if inline(opts) {
                break;
            }
            if option_takes_arg(name, opts) {
                rest.next();
            }
            continue;
        }
        out.push(base.join(w));
        break;
    }
    out
}

/// Commands that run the rest of their arguments as a command, with a test of which of their options take a
/// separate argument.
fn wrapper(name: &str) -> Option<fn(&str) -> bool> {
    fn timeout(o: &str) -> bool {
        matches!(o, "-s" | "-k" | "--signal" | "--kill-after")
    }
    fn nice(o: &str) -> bool {
        matches!(o, "-n" | "--adjustment")
    }
    fn ionice(o: &str) -> bool {
        matches!(o, "-c" | "-n" | "--class" | "--classdata")
    }
    fn stdbuf(o: &str) -> bool {
        matches!(o, "-i" | "-o" | "-e")
    }
    fn none(_: &str) -> bool {
        false
    }
    match name {
        "timeout" => Some(timeout),
        "nice" => Some(nice),
        "ionice" => Some(ionice),
        "stdbuf" => Some(stdbuf),
        "setsid" => Some(none),
        _ => None,
    }
}

fn is_shell(name: &str) -> bool {
    matches!(name, "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash")
}

/// Whether an interpreter's option word (without its `-` or `+`) is followed by a separate argument that is not
/// the script: `bash -o pipefail x.sh`, `python3 -W ignore x.py`, `node -r dotenv/config x.js`.
fn option_takes_arg(name: &str, opts: &str) -> bool {
    if is_shell(name) {
        return opts.ends_with('o') && !opts.starts_with('-')
            || opts.ends_with('O') && !opts.starts_with('-')
            || matches!(opts, "-rcfile" | "-init-file");
    }
    if name.starts_with("python") {
        return matches!(opts, "W" | "X");
    }
    if matches!(name, "node" | "nodejs") {
        return matches!(opts, "r" | "-require");
    }
    false
}

/// For an interpreter: a test of one option word (without its `-`) that says the code is inline, not a file.
fn interpreter(name: &str) -> Option<fn(&str) -> bool> {
    fn shell(o: &str) -> bool {
        !o.starts_with('-') && (o.contains('c') || o.contains('s'))
    }
    fn python(o: &str) -> bool {
        !o.starts_with('-') && (o.contains('c') || o.contains('m'))
    }
    fn perl(o: &str) -> bool {
        !o.starts_with('-') && (o.contains('e') || o.contains('E'))
    }
    fn node(o: &str) -> bool {
        matches!(o, "e" | "p" | "-eval" | "-print")
    }
    fn php(o: &str) -> bool {
        o == "r"
    }
    fn source(_: &str) -> bool {
        false
    }
    match name {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" => Some(shell),
        "." | "source" => Some(source),
        "perl" | "ruby" => Some(perl),
        "node" | "nodejs" => Some(node),
        "php" => Some(php),
        n if n.starts_with("python") => Some(python),
        _ => None,
    }
}

fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Split a shell line into its simple commands and their words, honouring quotes, backslashes, comments and
/// redirections. A word with an unquoted expansion (`$`, backquote, glob characters, a leading `~`) is `None`.
pub fn simple_commands(line: &str) -> Vec<Vec<Option<String>>> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut cmds = Vec::new();
    let mut words: Vec<Option<String>> = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut expands, mut redirect) = (false, false, false);
    let mut quote = Quote::None;
    let mut chars = line.chars().peekable();

    while let Some(c) = chars.next() {
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                } else {
                    word.push(c);
                }
            }
            Quote::Double => match c {
                '"' => quote = Quote::None,
                '\\' => match chars.next() {
                    Some(n @ ('$' | '`' | '"' | '\\')) => word.push(n),
                    Some('\n') => {}
                    Some(n) => {
                        word.push('\\');
                        word.push(n);
                    }
                    None => word.push('\\'),
                },
                '$' | '`' => {
                    expands = true;
                    word.push(c);
                }
                _ => word.push(c),
            },
            Quote::None => match c {
                '\'' => (quote, in_word) = (Quote::Single, true),
                '"' => (quote, in_word) = (Quote::Double, true),
                '\\' => {
                    if let Some(n) = chars.next() {
                        if n != '\n' {
                            word.push(n);
                            in_word = true;
                        }
                    }
                }
                '#' if !in_word => {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            break;
                        }
                    }
                    end_word(&mut words, &mut word, &mut in_word, &mut expands, &mut redirect);
                    cmds.push(std::mem::take(&mut words));
                }
                ' ' | '\t' => end_word(&mut words, &mut word, &mut in_word, &mut expands, &mut redirect),
                ';' | '&' | '|' | '\n' | '(' | ')' => {
                    end_word(&mut words, &mut word, &mut in_word, &mut expands, &mut redirect);
                    cmds.push(std::mem::take(&mut words));
                }
                '<' | '>' => {
                    // `2>file`: the digits were the fd, not a word.
                    if in_word && !expands && word.chars().all(|d| d.is_ascii_digit()) {
                        word.clear();
                        in_word = false;
                    }
                    end_word(&mut words, &mut word, &mut in_word, &mut expands, &mut redirect);
                    while chars.peek().is_some_and(|n| matches!(n, '<' | '>' | '&' | '|')) {
                        chars.next();
                    }
                    redirect = true;
                }
                '$' | '`' | '*' | '?' | '[' => {
                    expands = true;
                    in_word = true;
                    word.push(c);
                }
                '~' if !in_word => {
                    expands = true;
                    in_word = true;
                    word.push(c);
                }
                _ => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    end_word(&mut words, &mut word, &mut in_word, &mut expands, &mut redirect);
    cmds.push(words);
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// Finish the word being read: a command word, or the target of a redirection (dropped).
fn end_word(
    words: &mut Vec<Option<String>>,
    word: &mut String,
    in_word: &mut bool,
    expands: &mut bool,
    redirect: &mut bool,
) {
    if *in_word {
        if *redirect {
            *redirect = false;
        } else {
            words.push(if *expands { None } else { Some(std::mem::take(word)) });
        }
    }
    word.clear();
    *in_word = false;
    *expands = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scripts(line: &str) -> Vec<String> {
        in_shell_line(line, Path::new("/srv/app")).iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn a_command_word_with_a_slash_is_a_script() {
        assert_eq!(scripts("/srv/hooks/notify.sh"), ["/srv/hooks/notify.sh"]);
        assert_eq!(scripts("./notify.sh --channel ops"), ["/srv/app/./notify.sh"]);
        assert_eq!(scripts("bin/warm-cache"), ["/srv/app/bin/warm-cache"]);
        // Looked up on PATH: not the config's to vouch for.
        assert!(scripts("curl -fsS https://example.com/hook").is_empty());
        assert!(scripts("systemctl restart worker").is_empty());
    }

    #[test]
    fn an_interpreters_script_argument_is_a_script() {
        assert_eq!(scripts("sh /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("bash -eu /srv/x.sh arg"), ["/srv/x.sh"]);
        assert_eq!(scripts("/bin/sh /srv/x.sh"), ["/bin/sh", "/srv/x.sh"]);
        assert_eq!(scripts("python3 -u migrate.py"), ["/srv/app/migrate.py"]);
        assert_eq!(scripts(". /etc/profile.d/app.sh"), ["/etc/profile.d/app.sh"]);
        assert_eq!(scripts("perl -w /srv/x.pl"), ["/srv/x.pl"]);
        // Inline code names no file.
        assert!(scripts("sh -c 'echo hi'").is_empty());
        assert!(scripts("bash -ec 'echo hi'").is_empty());
        assert!(scripts("python3 -m http.server").is_empty());
        assert!(scripts("perl -e 'print 1'").is_empty());
        assert!(scripts("node -e 'console.log(1)'").is_empty());
    }

    #[test]
    fn interpreter_options_with_an_argument_are_not_the_script() {
        assert_eq!(scripts("bash -eu -o pipefail /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("bash -euo pipefail /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("sh +x -o errexit /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("bash -O extglob --rcfile /etc/rc /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("python3 -W ignore migrate.py"), ["/srv/app/migrate.py"]);
        assert_eq!(scripts("node -r dotenv/config /srv/x.js"), ["/srv/x.js"]);
    }

    #[test]
    fn brace_groups_and_wrappers_run_the_command_after_them() {
        assert_eq!(scripts("{ /srv/x.sh; }"), ["/srv/x.sh"]);
        assert_eq!(scripts("timeout 60 /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("timeout -s KILL --preserve-status 5m sh /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("nice -n 10 /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("nice -5 ionice -c 3 /srv/x.sh"), ["/srv/x.sh"]);
        assert_eq!(scripts("setsid -f stdbuf -o L /srv/x.sh"), ["/srv/x.sh"]);
        assert!(scripts("timeout 60 curl -fsS https://example.com").is_empty());
    }

    #[test]
    fn every_command_of_the_line_counts_and_prefixes_are_skipped() {
        assert_eq!(
            scripts("cd /srv && ./a.sh; FOO=1 exec /srv/b.sh | env -i X=1 sh c.sh & nohup /srv/d.sh"),
            ["/srv/app/./a.sh", "/srv/b.sh", "/srv/app/c.sh", "/srv/d.sh"]
        );
        assert_eq!(scripts("/srv/a.sh\n/srv/b.sh"), ["/srv/a.sh", "/srv/b.sh"]);
    }

    #[test]
    fn quotes_are_honoured_and_expansions_and_redirections_skipped() {
        assert_eq!(scripts("'/srv/my hooks/x.sh' \"a b\""), ["/srv/my hooks/x.sh"]);
        assert_eq!(scripts(r"/srv/my\ hooks/x.sh"), ["/srv/my hooks/x.sh"]);
        assert!(scripts("$HOOKS/x.sh").is_empty());
        assert!(scripts("~/x.sh").is_empty());
        assert!(scripts("/srv/*.sh").is_empty());
        assert!(scripts("\"$DIR/x.sh\"").is_empty());
        assert_eq!(scripts("echo hi > /srv/out.log 2>&1"), Vec::<String>::new());
        assert_eq!(scripts("</dev/null /srv/x.sh 2>/tmp/err"), ["/srv/x.sh"]);
        assert_eq!(scripts("/srv/x.sh # /srv/not-run.sh"), ["/srv/x.sh"]);
    }
}
