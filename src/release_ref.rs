//! Release names from CI: `deploy --release-from-ref REF` and `cutover release-name REF` turn a branch ref or
//! build tag (`refs/heads/feature/x`, `jenkins-myorg/myapp/main-42`) into a valid release name, so a pipeline
//! never has to sanitise one by hand and two runs with the same ref always get the same name.
//!
//! The rules, in order (README.md, "Release names from CI"):
//! 1. a leading `refs/heads/` or `refs/tags/` is dropped, else a leading `refs/` (`refs/pull/7/merge` →
//!    `pull-7-merge`);
//! 2. `%2F` (Jenkins' encoding of `/` in multibranch job names) counts as `/`;
//! 3. each run of characters other than `A-Z a-z 0-9 . _ -` becomes one `-`;
//! 4. anything but a letter or digit is trimmed from both ends;
//! 5. a result over 128 characters keeps its first 119, then `-` and 8 hex digits of the FNV-1a hash of the
//!    whole REF, so two long refs that share a prefix still get different names.
//!
//! Refs that differ only in the characters rule 3 replaces (`feature/x` and `feature-x`) get the same name.

use crate::config::Release;
use crate::exit;

const MAX: usize = 128;
const HASH_LEN: usize = 8;

/// The release name for a CI ref or build tag; an error when nothing of it is left (no letter or digit).
pub fn from_ref(reference: &str) -> Result<Release, String> {
    let rest =
        ["refs/heads/", "refs/tags/", "refs/"].iter().find_map(|p| reference.strip_prefix(p)).unwrap_or(reference);
    let rest = rest.replace("%2F", "/").replace("%2f", "/");
    let mut name = String::with_capacity(rest.len());
    let mut replacing = false;
    for c in rest.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            name.push(c);
            replacing = false;
        } else if !replacing {
            name.push('-');
            replacing = true;
        }
    }
    let mut name = trim(&name).to_string();
    if name.is_empty() {
        return Err(format!("--release-from-ref {reference:?} has no letter or digit to make a release name from"));
    }
    if name.len() > MAX {
        // All characters are ASCII here, so byte offsets are character offsets.
        let head = trim(&name[..MAX - HASH_LEN - 1]).to_string();
        name = format!("{head}-{:08x}", fnv1a(reference.as_bytes()));
    }
    name.parse()
}

/// The release `deploy` was asked for: `--release` as given, or the name derived from `--release-from-ref`,
/// said on stderr so that a CI log shows what a ref became. clap lets exactly one of the two through.
pub fn for_deploy(release: Option<&str>, reference: Option<&str>) -> anyhow::Result<Release> {
    match (release, reference) {
        (Some(r), None) => r.parse().map_err(exit::usage),
        (None, Some(reference)) => {
            let r = from_ref(reference).map_err(exit::usage)?;
            eprintln!("cutover: release {r} (from ref {reference})");
            Ok(r)
        }
        _ => Err(exit::usage("give one of --release or --release-from-ref")),
    }
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
}

/// 32-bit FNV-1a: tiny, and fixed by its definition, so a name derived today is the name derived next year
/// (std's hasher makes no such promise).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(r: &str) -> String {
        from_ref(r).unwrap().as_str().to_string()
    }

    #[test]
    fn ci_refs_become_release_names() {
        assert_eq!(name("jenkins-myorg/myapp/main-42"), "jenkins-myorg-myapp-main-42");
        assert_eq!(name("refs/heads/feature/x"), "feature-x");
        assert_eq!(name("refs/tags/v1.2.0"), "v1.2.0");
        assert_eq!(name("refs/pull/17/merge"), "pull-17-merge");
        assert_eq!(name("jenkins-myorg/myapp/feature%2Fnew-login-7"), "jenkins-myorg-myapp-feature-new-login-7");
        assert_eq!(name("v42"), "v42");
        assert_eq!(name("main-1a2b3c4"), "main-1a2b3c4");
    }

    #[test]
    fn runs_of_other_characters_become_one_dash_and_ends_are_trimmed() {
        assert_eq!(name("feature//a b\tc"), "feature-a-b-c");
        assert_eq!(name("  -_.release/1.0/-  "), "release-1.0");
        assert_eq!(name("héllo wörld"), "h-llo-w-rld");
        assert_eq!(name("a;rm -rf /"), "a-rm--rf", "only runs of replaced characters become one dash");
        assert_eq!(name("$(reboot)"), "reboot");
    }

    #[test]
    fn same_ref_same_name_and_the_name_is_a_valid_release() {
        for r in ["refs/heads/feature/x", "jenkins-a/b/c-1", "x".repeat(300).as_str(), "ünïcode-1"] {
            let a = from_ref(r).unwrap();
            assert_eq!(a, from_ref(r).unwrap());
            assert_eq!(a.as_str().parse::<Release>().unwrap(), a, "{r}");
        }
    }

    #[test]
    fn long_refs_are_cut_to_128_with_a_hash_of_the_whole_ref() {
        let a = format!("refs/heads/{}/one", "a".repeat(200));
        let b = format!("refs/heads/{}/two", "a".repeat(200));
        let (na, nb) = (name(&a), name(&b));
        assert_eq!(na.len(), 128);
        assert_eq!(nb.len(), 128);
        assert_ne!(na, nb);
        assert!(na.starts_with(&"a".repeat(119)), "{na}");
        assert_eq!(na, format!("{}-{:08x}", "a".repeat(119), fnv1a(a.as_bytes())));
        // A ref of exactly 128 valid characters is kept as it is.
        assert_eq!(name(&"b".repeat(128)), "b".repeat(128));
    }

    #[test]
    fn the_hash_is_fnv1a_32() {
        // Published FNV-1a test vectors: the derived names must not change between versions.
        assert_eq!(fnv1a(b""), 0x811c9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn a_ref_with_nothing_usable_is_an_error() {
        assert_eq!(
            from_ref("refs/heads/").unwrap_err(),
            "--release-from-ref \"refs/heads/\" has no letter or digit to make a release name from"
        );
        assert!(from_ref("///---").is_err());
        assert!(from_ref("").is_err());
    }
}
