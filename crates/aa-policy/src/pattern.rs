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
            } else if is_glob(p) {
                names.push(p.to_ascii_lowercase());
            } else {
                names.push(parse_host(p)?.name);
            }
        }
        Ok(HostSet {
            names: NameSet::new(&names, true)?,
            networks,
        })
    }

    /// The pattern that matches a host already in canonical form ([`parse_host`]).
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

/// A host as written in an action, taken apart and put in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// Lowercase name, or an IP address in canonical text form.
    pub(crate) name: String,
    /// A port written into the host (`example.com:8443`), if any.
    pub(crate) port: Option<u16>,
}

/// Parses a host the way resolvers read it, so a deny list cannot be side-stepped by spelling
/// the same address another way: IPv4 in any `inet_aton` form (`0xa9fea9fe`, `0251.0376.0251.0376`,
/// `169.254.43518`, `2852039166`), IPv4-mapped and -compatible IPv6, brackets, a trailing dot,
/// an attached port. Anything that is neither an IP address nor a valid host name is an error,
/// so `evil.com/.github.com` or `a@b.github.com` never reach the glob match.
pub(crate) fn parse_host(text: &str) -> Result<Host, String> {
    let text = text.trim();
    let bad = |why: &str| format!("invalid host \"{text}\": {why}");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after ']'")),
        };
        (inside, port)
    } else {
        match text.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            _ => (text, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("bad port"))
        })
        .transpose()?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host {
            name: canonical_ip(ip).to_string(),
            port,
        });
    }
    if let Some(v4) = inet_aton(host)? {
        return Ok(Host {
            name: v4.to_string(),
            port,
        });
    }
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(bad("not a host name or IP address"));
    }
    Ok(Host {
        name: host.to_ascii_lowercase(),
        port,
    })
}

/// IPv4 in the forms `inet_aton` accepts: one to four parts, each decimal, octal (leading 0) or
/// hex (0x); the last part fills the remaining bytes. `Ok(None)` when the text is not numeric.
fn inet_aton(host: &str) -> Result<Option<std::net::Ipv4Addr>, String> {
    let parts: Vec<&str> = host.split('.').collect();
    let numeric = |p: &str| {
        let digits = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"));
        match digits {
            Some(hex) => !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    if parts.len() > 4 || !parts.iter().all(|p| numeric(p)) {
        return Ok(None);
    }
    let bad = || format!("invalid host \"{host}\": not a valid IPv4 address");
    let value = |p: &str| -> Result<u64, String> {
        let parsed = if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8)
        } else {
            p.parse::<u64>()
        };
        parsed.map_err(|_| bad())
    };
    let values = parts
        .iter()
        .map(|p| value(p))
        .collect::<Result<Vec<u64>, _>>()?;
    let (last, leading) = values.split_last().ok_or_else(bad)?;
    if leading.iter().any(|v| *v > 255) {
        return Err(bad());
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return Err(bad());
    }
    let mut address: u64 = *last;
    for (i, v) in leading.iter().enumerate() {
        address |= v << (24 - 8 * i as u32);
    }
    Ok(Some(std::net::Ipv4Addr::from(address as u32)))
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        // ::1 and :: stay IPv6; other IPv4-mapped and -compatible addresses become IPv4.
        IpAddr::V6(v6) if !v6.is_loopback() && !v6.is_unspecified() => {
            v6.to_ipv4().map_or(ip, IpAddr::V4)
        }
        other => other,
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

/// Checks that `pattern` compiles as a (Rust `regex`) regular expression of bounded size, and
/// says why not in one line.
pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    match regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default().trim();
            Err(last.strip_prefix("error: ").unwrap_or(last).to_owned())
        }
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

    fn host(text: &str) -> String {
        parse_host(text).unwrap().name
    }

    #[test]
    fn hosts_that_are_not_names_are_errors() {
        for bad in [
            "evil.com/.github.com",
            "evil.com@x.github.com",
            ".github.com",
            "a..b",
            "",
            "x:0",
            "x:99999",
            "[::1",
            "300.1.1.1",
            "1.2.3.0x1ff",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_host("Example.COM:8443").unwrap(),
            Host {
                name: "example.com".into(),
                port: Some(8443)
            }
        );
        assert_eq!(host("[::1]"), "::1");
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
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.0xfe.169.254",
            "::a9fe:a9fe",
            "[::ffff:a9fe:a9fe]:80",
            "169.254.169.254:80",
        ] {
            assert_eq!(
                set.find(&host(spelling)),
                Some("169.254.169.254"),
                "{spelling}"
            );
        }
        assert_eq!(set.find(&host("10.1.2.3")), Some("10.0.0.0/8"));
        assert_eq!(set.find(&host("11.1.2.3")), None);
        assert!(HostSet::new(&["10.0.0.0/33".to_string()]).is_err());
        assert!(HostSet::new(&["nonsense/8".to_string()]).is_err());
    }

    #[test]
    fn hosts_compare_case_insensitively() {
        let set = hosts(&["API.OpenAI.com"]);
        assert!(set.find(&host("api.openai.COM")).is_some());
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
