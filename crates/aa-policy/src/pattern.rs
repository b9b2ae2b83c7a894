//! Matching compiled once at load: name globs, host globs and CIDR blocks, path prefixes.

use std::net::IpAddr;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// True when `pattern` uses glob syntax rather than naming one thing exactly.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Compiles one glob: `*` matches any run of characters (dots and slashes included).
pub(crate) fn compile_glob(pattern: &str, case_insensitive: bool) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob \"{pattern}\": {}", e.kind()))
}

/// An ordered set of globs; answers which one matches first, in the order they were written.
#[derive(Debug, Clone)]
pub(crate) struct GlobList {
    set: GlobSet,
    patterns: Vec<String>,
}

impl GlobList {
    pub(crate) fn new(globs: Vec<(String, Glob)>) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        let mut patterns = Vec::with_capacity(globs.len());
        for (pattern, glob) in globs {
            builder.add(glob);
            patterns.push(pattern);
        }
        let set = builder
            .build()
            .map_err(|e| format!("invalid glob set: {e}"))?;
        Ok(GlobList { set, patterns })
    }

    /// The index (in writing order) of the first glob matching `name`.
    pub(crate) fn first_match(&self, name: &str) -> Option<usize> {
        if self.patterns.is_empty() {
            return None;
        }
        self.set.matches(name).into_iter().min()
    }

    pub(crate) fn pattern(&self, index: usize) -> &str {
        self.patterns.get(index).map_or("", String::as_str)
    }
}

/// A list of names and globs (models, programs): exact names are checked before globs.
#[derive(Debug, Clone)]
pub(crate) struct NameSet {
    exact: Vec<String>,
    globs: GlobList,
}

impl NameSet {
    pub(crate) fn new(patterns: &[String], case_insensitive: bool) -> Result<Self, String> {
        let mut exact = Vec::new();
        let mut globs = Vec::new();
        for p in patterns {
            if is_glob(p) {
                globs.push((p.clone(), compile_glob(p, case_insensitive)?));
            } else if case_insensitive {
                exact.push(p.to_ascii_lowercase());
            } else {
                exact.push(p.clone());
            }
        }
        Ok(NameSet {
            exact,
            globs: GlobList::new(globs)?,
        })
    }

    /// The pattern that matches `name`, if any.
    pub(crate) fn find<'s>(&'s self, name: &str) -> Option<&'s str> {
        if let Some(e) = self.exact.iter().find(|e| *e == name) {
            return Some(e);
        }
        self.globs.first_match(name).map(|i| self.globs.pattern(i))
    }
}

/// Host patterns: exact names, globs (`*.github.com` matches subdomains only), IP addresses and
/// CIDR blocks (`10.0.0.0/8`). Hosts compare case-insensitively after normalisation.
#[derive(Debug, Clone)]
pub(crate) struct HostSet {
    names: NameSet,
    networks: Vec<(String, IpAddr, u8)>,
}

impl HostSet {
    pub(crate) fn new(patterns: &[String]) -> Result<Self, String> {
        let mut names = Vec::new();
        let mut networks = Vec::new();
        for p in patterns {
            if let Some((addr, bits)) = p.split_once('/') {
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("invalid CIDR block \"{p}\": bad address"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| {
                    format!("invalid CIDR block \"{p}\": prefix must be 0..={max}")
                })?;
                networks.push((p.clone(), canonical_ip(ip), bits));
            } else if p.is_empty() {
                return Err("empty host pattern".to_owned());
            } else {
                names.push(normalize_host(p));
            }
        }
        Ok(HostSet {
            names: NameSet::new(&names, true)?,
            networks,
        })
    }

    /// The pattern that matches an already [normalised](normalize_host) host.
    pub(crate) fn find<'s>(&'s self, host: &str) -> Option<&'s str> {
        if let Ok(ip) = host.parse::<IpAddr>()
            && let Some((p, ..)) = self
                .networks
                .iter()
                .find(|(_, net, bits)| in_network(ip, *net, *bits))
        {
            return Some(p);
        }
        self.names.find(host)
    }
}

/// Lowercases, drops a trailing dot and IPv6 brackets, and rewrites IP literals to one canonical
/// form (`::ffff:a.b.c.d` and plain decimal `2852039166` become dotted IPv4), so a deny list cannot
/// be side-stepped by spelling the same address another way.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return canonical_ip(ip).to_string();
    }
    if !host.is_empty()
        && host.len() <= 10
        && host.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = host.parse::<u32>()
    {
        return std::net::Ipv4Addr::from(n).to_string();
    }
    host.to_ascii_lowercase()
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (canonical_ip(ip), net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Why a path cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    Nul,
    Relative,
}

/// Normalises an absolute path lexically: collapses `//`, drops `.`, resolves `..` (never above
/// `/`). Symlinks are not followed: this runs without IO, on the path as the agent gave it.
pub(crate) fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathError::Relative);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// True when normalised `path` is `prefix` itself or lies under it (component-wise, so
/// `/workspace` does not cover `/workspace2`).
pub(crate) fn under_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(p: &[&str]) -> HostSet {
        HostSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn star_dot_matches_subdomains_only() {
        let set = hosts(&["*.github.com"]);
        assert_eq!(set.find("api.github.com"), Some("*.github.com"));
        assert_eq!(set.find("a.b.github.com"), Some("*.github.com"));
        assert_eq!(set.find("github.com"), None);
        assert_eq!(set.find("evilgithub.com"), None);
    }

    #[test]
    fn ip_spellings_and_cidr_blocks_are_caught() {
        let set = hosts(&["169.254.169.254", "10.0.0.0/8"]);
        for spelling in [
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "2852039166",
            "169.254.169.254.",
        ] {
            assert_eq!(
                set.find(&normalize_host(spelling)),
                Some("169.254.169.254"),
                "{spelling}"
            );
        }
        assert_eq!(set.find(&normalize_host("10.1.2.3")), Some("10.0.0.0/8"));
        assert_eq!(set.find(&normalize_host("11.1.2.3")), None);
        assert!(HostSet::new(&["10.0.0.0/33".to_string()]).is_err());
        assert!(HostSet::new(&["nonsense/8".to_string()]).is_err());
    }

    #[test]
    fn hosts_compare_case_insensitively() {
        let set = hosts(&["API.OpenAI.com"]);
        assert!(set.find(&normalize_host("api.openai.COM")).is_some());
    }

    #[test]
    fn paths_normalise_lexically() {
        assert_eq!(
            normalize_path("/workspace/../etc//passwd").unwrap(),
            "/etc/passwd"
        );
        assert_eq!(normalize_path("/a/./b/").unwrap(), "/a/b");
        assert_eq!(normalize_path("/../../x").unwrap(), "/x");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/a\0b"), Err(PathError::Nul));
        assert_eq!(normalize_path("a/b"), Err(PathError::Relative));
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under_prefix("/workspace/a", "/workspace"));
        assert!(under_prefix("/workspace", "/workspace"));
        assert!(!under_prefix("/workspace2/a", "/workspace"));
        assert!(under_prefix("/anything", "/"));
    }

    #[test]
    fn first_glob_in_writing_order_wins() {
        let list = GlobList::new(vec![
            ("db_*".into(), compile_glob("db_*", false).unwrap()),
            ("d*".into(), compile_glob("d*", false).unwrap()),
        ])
        .unwrap();
        assert_eq!(list.first_match("db_drop"), Some(0));
        assert_eq!(list.first_match("deploy"), Some(1));
        assert_eq!(list.first_match("shell"), None);
        assert!(compile_glob("db_[", false).is_err());
    }
}
