//! nginx's configuration as a tree, read from what `nginx -T` prints: every file it loaded, each introduced by
//! `# configuration file PATH:`. Files are tokenized as nginx does (words, quotes, `;`, blocks, `#` comments)
//! and `include` directives are expanded in place, in nginx's order (a glob's matches sorted by name), so that a
//! walk sees the directives in the order nginx applies them. Pure: tests feed it dump text.
//!
//! Every directive keeps the file, line and byte range it came from, so that a caller can rewrite one directive
//! in its file (see `crate::adopt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    /// Arguments with their quotes removed.
    pub args: Vec<String>,
    pub file: PathBuf,
    /// 1-based line of the directive's name.
    pub line: usize,
    /// Byte range in the file's text: from the name to the `;` or the block's `}`, both included.
    pub start: usize,
    pub end: usize,
    pub block: Option<Vec<Directive>>,
    /// For `include`: the directives of the files it loaded, in order.
    pub included: Vec<Directive>,
}

impl Directive {
    /// The directives inside the block, with includes expanded (empty when this is not a block).
    pub fn children(&self) -> Vec<&Directive> {
        self.block.as_deref().map(effective).unwrap_or_default()
    }

    /// Every directive below this one, depth first, includes expanded.
    pub fn descendants(&self) -> Vec<&Directive> {
        let mut out = Vec::new();
        for d in self.children() {
            out.push(d);
            out.extend(d.descendants());
        }
        out
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }

    /// `file:line`, for messages.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A list of directives with every `include` replaced by what it loaded (the `include` itself is left out).
pub fn effective(list: &[Directive]) -> Vec<&Directive> {
    let mut out = Vec::new();
    for d in list {
        if d.name == "include" {
            out.extend(effective(&d.included));
        } else {
            out.push(d);
        }
    }
    out
}

/// The whole configuration: the main file's directives, includes expanded, and every file's text.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    pub main: Vec<Directive>,
    pub files: BTreeMap<PathBuf, String>,
    /// The main config file (the first one in the dump).
    pub main_file: Option<PathBuf>,
}

impl Conf {
    /// Parse `nginx -T` output. Text that does not parse is kept as far as it went: this reads a config nginx
    /// itself accepted, and is never the judge of it.
    pub fn parse(dump: &str) -> Conf {
        let (order, files) = split_files(dump);
        let Some(main_file) = order.first().cloned() else { return Conf::default() };
        let conf_dir = main_file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut expander = Expander { files: &files, order: &order, conf_dir, depth: 0 };
        let main = expander.file(&main_file);
        Conf { main, files, main_file: Some(main_file) }
    }

    /// The top-level directives, includes expanded.
    pub fn top(&self) -> Vec<&Directive> {
        effective(&self.main)
    }

    /// The `http` blocks' directives, includes expanded.
    pub fn http(&self) -> Vec<&Directive> {
        self.top().into_iter().filter(|d| d.name == "http").flat_map(|d| d.children()).collect()
    }

    /// The `server` blocks of the http context, in order.
    pub fn http_servers(&self) -> Vec<&Directive> {
        self.http().into_iter().filter(|d| d.name == "server" && d.block.is_some()).collect()
    }

    /// The `upstream NAME { }` blocks of the http context.
    pub fn upstreams(&self) -> Vec<&Directive> {
        self.http().into_iter().filter(|d| d.name == "upstream" && d.block.is_some()).collect()
    }
}

/// The files of a dump, in the order they appear, and their text.
pub fn split_files(dump: &str) -> (Vec<PathBuf>, BTreeMap<PathBuf, String>) {
    let mut order = Vec::new();
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut current: Option<PathBuf> = None;
    let mut text = String::new();
    for line in dump.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = bare.strip_prefix("# configuration file ").and_then(|r| r.strip_suffix(':')) {
            if let Some(p) = current.take() {
                files.entry(p).or_insert(std::mem::take(&mut text));
            }
            text.clear();
            let p = PathBuf::from(rest);
            if !order.contains(&p) {
                order.push(p.clone());
            }
            current = Some(p);
        } else if current.is_some() {
            text.push_str(line);
        }
    }
    if let Some(p) = current {
        files.entry(p).or_insert(text);
    }
    // nginx -T separates files with an empty line it adds after each one.
    for t in files.values_mut() {
        if t.ends_with("\n\n") {
            t.pop();
        }
    }
    (order, files)
}

struct Expander<'a> {
    files: &'a BTreeMap<PathBuf, String>,
    order: &'a [PathBuf],
    conf_dir: PathBuf,
    depth: usize,
}

impl Expander<'_> {
    fn file(&mut self, path: &Path) -> Vec<Directive> {
        let Some(text) = self.files.get(path) else { return Vec::new() };
        let mut list = parse_text(text, path);
        if self.depth < 16 {
            self.depth += 1;
            self.expand(&mut list);
            self.depth -= 1;
        }
        list
    }

    fn expand(&mut self, list: &mut [Directive]) {
        for d in list {
            if d.name == "include" {
                if let Some(pattern) = d.args.first() {
                    let pattern = if Path::new(pattern).is_absolute() {
                        PathBuf::from(pattern)
                    } else {
                        self.conf_dir.join(pattern)
                    };
                    for f in self.matches(&pattern) {
                        let mut sub = self.file(&f);
                        d.included.append(&mut sub);
                    }
                }
            } else if let Some(block) = &mut d.block {
                self.expand(block);
            }
        }
    }

    /// The dumped files an include names: the file itself, or a glob's matches sorted by name.
    fn matches(&self, pattern: &Path) -> Vec<PathBuf> {
        let p = pattern.to_string_lossy();
        if !p.contains(['*', '?', '[']) {
            return self.order.iter().filter(|f| f.as_path() == pattern).cloned().collect();
        }
        let mut m: Vec<PathBuf> = self.order.iter().filter(|f| glob_match(&p, &f.to_string_lossy())).cloned().collect();
        m.sort();
        m
    }
}

/// Shell-style matching as glob(3) does it for one path: `*` and `?` never match `/`; `[...]` classes.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != '/').any(|i| go(&p[1..], &s[i..])),
            Some('?') => s.first().is_some_and(|c| *c != '/') && go(&p[1..], &s[1..]),
            Some('[') => {
                let Some(close) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                    return s.first() == Some(&'[') && go(&p[1..], &s[1..]);
                };
                let Some(c) = s.first() else { return false };
                let (negate, set) = match p[1] {
                    '!' | '^' => (true, &p[2..close]),
                    _ => (false, &p[1..close]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= *c && *c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == *c;
                        i += 1;
                    }
                }
                hit != negate && *c != '/' && go(&p[close + 1..], &s[1..])
            }
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = path.chars().collect();
    go(&p, &s)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word { text: String, start: usize },
    Semi(usize),
    Open,
    Close(usize),
}

/// nginx's tokenizer: words (quotes removed, `\` escapes kept as nginx keeps them), `;`, `{`, `}`, and `#`
/// comments where a word would start. `${var}` is one word.
fn tokenize(text: &str) -> Vec<Tok> {
    let b: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let (at, c) = b[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < b.len() && b[i].1 != '\n' {
                    i += 1;
                }
            }
            ';' => {
                out.push(Tok::Semi(at));
                i += 1;
            }
            '{' => {
                out.push(Tok::Open);
                i += 1;
            }
            '}' => {
                out.push(Tok::Close(at));
                i += 1;
            }
            '"' | '\'' => {
                let quote = c;
                let mut word = String::new();
                i += 1;
                while i < b.len() && b[i].1 != quote {
                    if b[i].1 == '\\' && i + 1 < b.len() {
                        let next = b[i + 1].1;
                        if next == quote || next == '\\' {
                            word.push(next);
                            i += 2;
                            continue;
                        }
                    }
                    word.push(b[i].1);
                    i += 1;
                }
                i += 1;
                out.push(Tok::Word { text: word, start: at });
            }
            _ => {
                let mut word = String::new();
                let mut in_var_brace = false;
                while i < b.len() {
                    let ch = b[i].1;
                    if in_var_brace {
                        word.push(ch);
                        in_var_brace = ch != '}';
                        i += 1;
                        continue;
                    }
                    if ch == '{' && word.ends_with('$') {
                        word.push(ch);
                        in_var_brace = true;
                        i += 1;
                        continue;
                    }
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}') {
                        break;
                    }
                    if ch == '\\' && i + 1 < b.len() {
                        word.push(ch);
                        word.push(b[i + 1].1);
                        i += 2;
                        continue;
                    }
                    word.push(ch);
                    i += 1;
                }
                out.push(Tok::Word { text: word, start: at });
            }
        }
    }
    out
}

/// The directives of one file's text, includes not expanded.
pub fn parse_text(text: &str, file: &Path) -> Vec<Directive> {
    let toks = tokenize(text);
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut pos = 0;
    parse_list(&toks, &mut pos, file, &line_of)
}

fn parse_list(toks: &[Tok], pos: &mut usize, file: &Path, line_of: &dyn Fn(usize) -> usize) -> Vec<Directive> {
    let mut list = Vec::new();
    while *pos < toks.len() {
        match &toks[*pos] {
            Tok::Close(_) => return list,
            Tok::Semi(_) | Tok::Open => {
                *pos += 1;
                continue;
            }
            Tok::Word { text, start } => {
                let (name, start) = (text.clone(), *start);
                *pos += 1;
                let mut args = Vec::new();
                while let Some(Tok::Word { text, .. }) = toks.get(*pos) {
                    args.push(text.clone());
                    *pos += 1;
                }
                let mut d = Directive {
                    name,
                    args,
                    file: file.to_path_buf(),
                    line: line_of(start),
                    start,
                    end: start,
                    block: None,
                    included: Vec::new(),
                };
                match toks.get(*pos) {
                    Some(Tok::Semi(at)) => {
                        d.end = at + 1;
                        *pos += 1;
                    }
                    Some(Tok::Open) => {
                        *pos += 1;
                        let block = parse_list(toks, pos, file, line_of);
                        if let Some(Tok::Close(at)) = toks.get(*pos) {
                            d.end = at + 1;
                            *pos += 1;
                        }
                        d.block = Some(block);
                    }
                    _ => {}
                }
                list.push(d);
            }
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "# configuration file /etc/nginx/nginx.conf:\n\
        user www-data;\n\
        events { worker_connections 768; }\n\
        http {\n\
        \x20   include /etc/nginx/conf.d/*.conf;\n\
        \x20   include /etc/nginx/sites-enabled/*;\n\
        }\n\
        \n\
        # configuration file /etc/nginx/sites-enabled/z-shop:\n\
        server {\n\
        \x20   listen 80; # the site\n\
        \x20   server_name shop.example.com;\n\
        \x20   include /etc/nginx/conf.d/service-url.inc;\n\
        \x20   location / { proxy_pass $service_url; }\n\
        }\n\
        \n\
        # configuration file /etc/nginx/conf.d/service-url.inc:\n\
        set $service_url http://127.0.0.1:8081;\n\
        \n\
        # configuration file /etc/nginx/sites-enabled/default:\n\
        server { listen 80 default_server; server_name _; return 200 \"a ; b\"; }\n\
        \n";

    #[test]
    fn includes_are_expanded_in_nginx_order_with_places() {
        let conf = Conf::parse(DUMP);
        let servers = conf.http_servers();
        assert_eq!(servers.len(), 2);
        // The glob sites-enabled/* sorts `default` before `z-shop`.
        assert_eq!(servers[0].file, PathBuf::from("/etc/nginx/sites-enabled/default"));
        assert_eq!(servers[1].file, PathBuf::from("/etc/nginx/sites-enabled/z-shop"));
        let set = servers[1].descendants().into_iter().find(|d| d.name == "set").unwrap();
        assert_eq!(set.args, ["$service_url", "http://127.0.0.1:8081"]);
        assert_eq!(set.place(), "/etc/nginx/conf.d/service-url.inc:1");
        let text = &conf.files[&set.file];
        assert_eq!(&text[set.start..set.end], "set $service_url http://127.0.0.1:8081;");
        let ret = servers[0].children().into_iter().find(|d| d.name == "return").unwrap();
        assert_eq!(ret.args, ["200", "a ; b"], "a quoted `;` does not end the directive");
        // The service-url.inc is not matched by conf.d/*.conf.
        assert!(conf.http().iter().all(|d| d.name != "set"));
    }

    #[test]
    fn blocks_keep_their_byte_range_and_comments_are_skipped() {
        let text =
            "upstream app { # pool\n  server 127.0.0.1:8081; # live\n  server 127.0.0.1:8082 backup;\n}\nx ${a}b;\n";
        let list = parse_text(text, Path::new("/x.conf"));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].start, 0);
        assert!(text[..list[0].end].ends_with("backup;\n}"), "{}", &text[..list[0].end]);
        let servers: Vec<&Vec<String>> = list[0].children().iter().map(|d| &d.args).collect();
        assert_eq!(servers, [&vec!["127.0.0.1:8081".to_string()], &vec!["127.0.0.1:8082".into(), "backup".into()]]);
        assert_eq!(list[0].children()[1].line, 3);
        assert_eq!(list[1].args, ["${a}b"]);
    }

    #[test]
    fn globs_match_like_glob3() {
        assert!(glob_match("/etc/nginx/conf.d/*.conf", "/etc/nginx/conf.d/a.conf"));
        assert!(!glob_match("/etc/nginx/conf.d/*.conf", "/etc/nginx/conf.d/sub/a.conf"));
        assert!(!glob_match("/etc/nginx/conf.d/*.conf", "/etc/nginx/conf.d/service-url.inc"));
        assert!(glob_match("/e/site?-[a-c]", "/e/site1-b"));
        assert!(!glob_match("/e/site?-[!a-c]", "/e/site1-b"));
    }

    #[test]
    fn relative_includes_start_at_the_main_files_directory() {
        let dump = "# configuration file /p/conf/nginx.conf:\nhttp { include sites/*.conf; }\n\n\
                    # configuration file /p/conf/sites/a.conf:\nserver { listen 8080; }\n\n";
        let conf = Conf::parse(dump);
        assert_eq!(conf.http_servers().len(), 1);
        assert_eq!(conf.main_file, Some(PathBuf::from("/p/conf/nginx.conf")));
    }
}
