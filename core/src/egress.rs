//! Where the agent's downloads (a task's `fetch`, rootfs images) may
//! connect, pure. The agent downloads as root from the host's network on
//! behalf of any submitter, a `network: none` task's scoped token
//! included: without a rule, a URI (or a redirect) naming loopback, a
//! link-local metadata service (169.254.169.254) or the agent's own API
//! hands the submitter what only the host can reach.
//!
//! Refused unless allowed by `fetch_allow_hosts`: loopback, link-local,
//! unspecified (`0.0.0.0/8`, `::`), multicast and broadcast addresses,
//! IPv4-mapped IPv6 forms of these included, cloud metadata services off
//! link-local (`100.100.100.200`, `fd00:ec2::254`, Azure's
//! `168.63.129.16`), IPv4-compatible `::/96`, NAT64 and 6to4 forms of the
//! above, and any address of this host (its interfaces: what a wildcard
//! listener answers on). The agent's own listen
//! address is refused even when allowed. The agent checks every hop of a
//! redirect and every address a name resolves to (the addresses it then
//! connects to: no second lookup to rebind).
//!
//! `file://` (rootfs images only) reads a host file as root: refused
//! unless the path lies below a directory the operator listed in
//! `image_file_dirs` (default none).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

/// One entry of `fetch_allow_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// An address or a network (`127.0.0.1`, `10.0.0.0/8`, `::1/128`),
    /// on one port or all.
    Net {
        net: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// A host name, as written in URIs (lower case), on one port or all.
    Name(String, Option<u16>),
}

/// `HOST:PORT`, `[V6]:PORT`, `ADDR/BITS:PORT` or an entry without a port
/// (a bare IPv6 address has several colons and no port).
fn split_port(e: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{e:?}: the port must be 1 to 65535"))
    };
    if let Some(rest) = e.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!("{e:?}: no closing ']'"));
        };
        return match after.strip_prefix(':') {
            Some(p) => Ok((inner.to_owned(), Some(port(p)?))),
            None if after.is_empty() => Ok((inner.to_owned(), None)),
            None => Ok((format!("{inner}{after}"), None)),
        };
    }
    match e.split_once(':') {
        Some((host, p)) if !p.contains(':') => Ok((host.to_owned(), Some(port(p)?))),
        _ => Ok((e.to_owned(), None)),
    }
}

/// The allow list and the agent's own address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    allow: Vec<Allow>,
    /// The agent's API: never a download's target.
    own: Option<SocketAddr>,
    /// `image_file_dirs`: where `file://` may read (absolute paths).
    file_dirs: Vec<PathBuf>,
    /// Where `file://` never reads, even below a listed dir: the agent's
    /// data dir (api.token, tasks' files, the image cache).
    private_dir: Option<PathBuf>,
}

/// Why an address is refused by default, if it is.
pub fn denied_class(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8: Linux connects 0.0.0.0 to the local host.
                Some("unspecified")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("broadcast")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                // Alibaba Cloud's metadata service (not link-local).
                Some("cloud metadata")
            } else if v4 == Ipv4Addr::new(168, 63, 129, 16) {
                // Azure's WireServer: its Linux agent lets only root reach
                // it, and downloads run as root.
                Some("cloud metadata")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
                // AWS's IPv6 metadata service (a ULA, not link-local).
                Some("cloud metadata")
            } else if v6.segments()[..6] == [0; 6] {
                // ::/96, IPv4-compatible (deprecated): `::127.0.0.1` may
                // reach what its IPv4 form names.
                Some("IPv4-compatible")
            } else if let Some(v4) = embedded_v4(v6) {
                // NAT64 and 6to4 forms reach the IPv4 address they carry.
                denied_class(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

/// The IPv4 address a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`)
/// address carries: a gateway on the path connects to it.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        (IpAddr::V6(a), IpAddr::V4(_)) => match a.to_ipv4_mapped() {
            Some(v4) => return in_net(IpAddr::V4(v4), net, prefix),
            None => return false,
        },
        _ => return false,
    };
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

impl Egress {
    /// Parses `fetch_allow_hosts`: addresses, networks (`ADDR/BITS`) or
    /// host names, each optionally with `:PORT` (`[V6]:PORT`) to allow
    /// that port only. The error names the entry.
    pub fn parse(entries: &[String], own: Option<SocketAddr>) -> Result<Egress, String> {
        let mut allow = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            let (body, port) = split_port(entry)?;
            let e = body.as_str();
            let (addr, prefix) = match e.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (e, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            match addr.parse::<IpAddr>() {
                Ok(net) => {
                    let max = if net.is_ipv4() { 32 } else { 128 };
                    let prefix = match prefix {
                        None => max,
                        Some(p) => match p.parse::<u8>() {
                            Ok(p) if p <= max => p,
                            _ => return Err(format!("{entry:?}: the prefix must be 0 to {max}")),
                        },
                    };
                    allow.push(Allow::Net { net, prefix, port });
                }
                Err(_) => {
                    let ok = prefix.is_none()
                        && !e.is_empty()
                        && e.len() <= 253
                        && e.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !ok {
                        return Err(format!(
                            "{entry:?}: not an address, a network (ADDR/BITS) or a host name, with an optional :PORT"
                        ));
                    }
                    allow.push(Allow::Name(e.to_ascii_lowercase(), port));
                }
            }
        }
        Ok(Egress {
            allow,
            own,
            file_dirs: Vec::new(),
            private_dir: None,
        })
    }

    /// Sets `image_file_dirs`; each must be absolute, without `..`, not `/`
    /// and not a system tree ([`file_dir_refusal`]).
    pub fn with_file_dirs(mut self, dirs: &[PathBuf]) -> Result<Egress, String> {
        for d in dirs {
            if let Some(why) = file_dir_refusal(d) {
                return Err(why);
            }
        }
        self.file_dirs = dirs.to_vec();
        Ok(self)
    }

    pub fn file_dirs(&self) -> &[PathBuf] {
        &self.file_dirs
    }

    /// Sets the dir `file://` never reads below (the data dir).
    pub fn with_private_dir(mut self, dir: PathBuf) -> Egress {
        self.private_dir = Some(dir);
        self
    }

    pub fn private_dir(&self) -> Option<&Path> {
        self.private_dir.as_deref()
    }

    /// May a `file://` URI read `path`? Lexical only: the agent opens the
    /// resolved path and checks it again (symlinks), and opens only
    /// regular files.
    pub fn check_file(&self, path: &str) -> Result<(), String> {
        let p = Path::new(path);
        if !p.is_absolute() || has_dot_dot(p) {
            return Err(format!(
                "file://{path}: needs an absolute path without '..'"
            ));
        }
        if under_any(p, &self.file_dirs) {
            return Ok(());
        }
        Err(if self.file_dirs.is_empty() {
            "file:// is refused: the agent lists no image_file_dirs (serve the image over http(s))"
                .to_owned()
        } else {
            format!(
                "file://{path} is not below one of image_file_dirs ({})",
                self.file_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// A name entry's port is checked where the port is known, by
    /// [`Self::check_name_port`] on the URI; a resolver (`port` None)
    /// takes every entry of the name.
    fn name_allowed(&self, host: &str, port: Option<u16>) -> bool {
        self.allow.iter().any(|a| {
            matches!(a, Allow::Name(n, p)
                if n.eq_ignore_ascii_case(host) && (p.is_none() || port.is_none() || *p == port))
        })
    }

    /// An address entry with a port allows only that port, so not where
    /// the port is unknown (a name resolved to the address).
    fn addr_allowed(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.allow.iter().any(|a| {
            matches!(a, Allow::Net { net, prefix, port: p }
                if in_net(ip, *net, *prefix) && (p.is_none() || *p == port))
        })
    }

    /// A URI naming `host` on `port`: a name that fetch_allow_hosts lists
    /// only with other ports is refused (whatever it resolves to).
    pub fn check_name_port(&self, host: &str, port: Option<u16>) -> Result<(), String> {
        let ports: Vec<Option<u16>> = self
            .allow
            .iter()
            .filter_map(|a| match a {
                Allow::Name(n, p) if n.eq_ignore_ascii_case(host) => Some(*p),
                _ => None,
            })
            .collect();
        if ports.is_empty() || ports.iter().any(|p| p.is_none() || *p == port) {
            return Ok(());
        }
        let listed: Vec<String> = ports.iter().flatten().map(u16::to_string).collect();
        Err(format!(
            "{host} port {}: fetch_allow_hosts lists it only on port {}",
            port.unwrap_or_default(),
            listed.join(", ")
        ))
    }

    /// The agent's API port, if it listens on TCP.
    pub fn own_port(&self) -> Option<u16> {
        self.own.map(|o| o.port())
    }

    /// Whether `ip` on `port` reaches the agent's API: its address in any
    /// form (IPv4-mapped included), `0.0.0.0`/`::` (Linux connects those
    /// to the host), and with a wildcard listener loopback and every
    /// address of the host (`local`, its interfaces).
    fn is_own(&self, ip: IpAddr, port: Option<u16>, local: &[IpAddr]) -> bool {
        let (Some(own), Some(port)) = (self.own, port) else {
            return false;
        };
        if port != own.port() {
            return false;
        }
        let (ip, own_ip) = (unmap(ip), unmap(own.ip()));
        own_ip == ip
            || ip.is_unspecified()
            || (own_ip.is_unspecified()
                && (denied_class(ip) == Some("loopback") || local.iter().any(|&l| unmap(l) == ip)))
    }

    /// Refuses `addrs` (what `host` is or resolved to) on `port` when one
    /// of them is the agent's own API; `local`: the host's addresses.
    pub fn check_own(
        &self,
        host: &str,
        addrs: &[IpAddr],
        port: Option<u16>,
        local: &[IpAddr],
    ) -> Result<(), String> {
        match addrs.iter().find(|&&ip| self.is_own(ip, port, local)) {
            Some(ip) => Err(format!(
                "{host} ({ip}) port {}: the agent's own API is never fetched from",
                port.unwrap_or_default()
            )),
            None => Ok(()),
        }
    }

    /// Refuses an address of this host (`local`: its interfaces) that
    /// fetch_allow_hosts does not list: it reaches every service bound to
    /// a wildcard address, the agent's API on any port among them, as
    /// loopback would. Checked where the addresses are connected to (the
    /// resolver), so a name rebound to the host's LAN address between two
    /// lookups is caught too.
    pub fn check_local(
        &self,
        host: &str,
        addrs: &[IpAddr],
        port: Option<u16>,
        local: &[IpAddr],
    ) -> Result<(), String> {
        if self.name_allowed(host, port) {
            return Ok(());
        }
        // The address as connected to, and the IPv4 one a NAT64, 6to4 or
        // mapped form carries.
        let forms = |ip: IpAddr| {
            let v4 = match unmap(ip) {
                IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
                v4 => Some(v4),
            };
            [Some(unmap(ip)), v4]
        };
        match addrs.iter().find(|&&ip| {
            let forms = forms(ip);
            local
                .iter()
                .any(|&l| forms.contains(&Some(unmap(l))))
                && !self.addr_allowed(ip, port)
        }) {
            Some(ip) => Err(format!(
                "{host} ({ip}) is an address of this host: downloads are refused there unless fetch_allow_hosts lists it"
            )),
            None => Ok(()),
        }
    }

    /// May a download connect to `host` (as written in the URI), which is
    /// or resolved to `addrs`, on `port` (None when a resolver does not
    /// know it)? Every address must pass: a name is refused if one of its
    /// addresses would be.
    pub fn check(&self, host: &str, addrs: &[IpAddr], port: Option<u16>) -> Result<(), String> {
        let by_name = self.name_allowed(host, port);
        self.check_own(host, addrs, port, &[])?;
        for &ip in addrs {
            if let Some(class) = denied_class(ip) {
                if !by_name && !self.addr_allowed(ip, port) {
                    return Err(format!(
                        "{host} ({ip}) is a {class} address: downloads are refused there unless fetch_allow_hosts lists it"
                    ));
                }
            }
        }
        if addrs.is_empty() {
            return Err(format!("{host}: no address"));
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Trees no `image_file_dirs` entry may be, or lie below: what any
/// submitter could then read as root (shadow, keys, the kernel's files,
/// devices whose open has effects) or plant (world-writable temp dirs).
const SYSTEM_TREES: &[&str] = &[
    "/etc", "/root", "/boot", "/proc", "/sys", "/dev", "/run", "/var/run", "/usr", "/bin", "/sbin",
    "/lib", "/lib32", "/lib64", "/libx32",
];

/// World-writable dirs: anyone could plant a file (or a hardlink) there.
/// A private dir below them is fine (the agent checks each dir's owner and
/// mode when it opens a file).
const SHARED_TEMP: &[&str] = &["/tmp", "/var/tmp"];

/// Why `dir` may not be an `image_file_dirs` entry, if it may not. Lexical:
/// the agent checks the resolved directory again, and its owner and mode,
/// when it opens a file below it.
pub fn file_dir_refusal(dir: &Path) -> Option<String> {
    if !dir.is_absolute() || dir.parent().is_none() || has_dot_dot(dir) {
        return Some(format!(
            "{}: must be an absolute directory other than /, without '..'",
            dir.display()
        ));
    }
    if SHARED_TEMP.iter().any(|t| dir == Path::new(t)) {
        return Some(format!("{}: is world-writable", dir.display()));
    }
    SYSTEM_TREES
        .iter()
        .find(|t| dir.starts_with(t))
        .map(|t| format!("{}: is a system tree or below one ({t})", dir.display()))
}

fn has_dot_dot(p: &Path) -> bool {
    p.components().any(|c| c == Component::ParentDir)
}

/// Whether `p` lies strictly below one of `dirs` (component-wise).
pub fn under_any(p: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| p.starts_with(d) && p != d.as_path())
}

/// An address written in a URI's host (brackets of IPv6 dropped).
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn e(entries: &[&str]) -> Egress {
        let v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        Egress::parse(&v, None).unwrap()
    }

    #[test]
    fn the_default_refuses_local_and_metadata_addresses() {
        let d = Egress::default();
        for (a, class) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let err = d.check("h", &[ip(a)], Some(80)).unwrap_err();
            assert!(err.contains(class), "{a}: {err}");
            assert!(err.contains("fetch_allow_hosts"), "{a}: {err}");
        }
        for a in ["10.0.0.5", "192.168.1.1", "8.8.8.8", "2001:db8::1"] {
            assert!(d.check("h", &[ip(a)], Some(80)).is_ok(), "{a}");
        }
        // One bad address among good ones refuses the name.
        assert!(d
            .check("h", &[ip("10.0.0.5"), ip("127.0.0.1")], None)
            .is_err());
        assert!(d.check("h", &[], None).is_err());
    }

    #[test]
    fn allowed_addresses_networks_and_names() {
        let a = e(&["127.0.0.1", "169.254.0.0/16", "Files.Local", "::1"]);
        assert!(a.check("127.0.0.1", &[ip("127.0.0.1")], Some(8080)).is_ok());
        assert!(a.check("127.0.0.2", &[ip("127.0.0.2")], None).is_err());
        assert!(a.check("x", &[ip("169.254.169.254")], None).is_ok());
        assert!(a.check("files.local", &[ip("127.0.0.5")], None).is_ok());
        assert!(a.check("FILES.LOCAL", &[ip("127.0.0.5")], None).is_ok());
        assert!(a.check("x", &[ip("::1")], None).is_ok());
        assert!(a.check("x", &[ip("::ffff:127.0.0.1")], None).is_ok());
        let all = e(&["0.0.0.0/0"]);
        assert!(all.check("x", &[ip("127.0.0.1")], None).is_ok());
        assert!(
            all.check("x", &[ip("::1")], None).is_err(),
            "v4 net, v6 addr"
        );
    }

    #[test]
    fn the_agents_own_api_is_refused_even_when_allowed() {
        let v = vec!["127.0.0.0/8".to_string()];
        let own = Egress::parse(&v, Some("127.0.0.1:5051".parse().unwrap())).unwrap();
        let err = own
            .check("127.0.0.1", &[ip("127.0.0.1")], Some(5051))
            .unwrap_err();
        assert!(err.contains("own API"), "{err}");
        assert!(own
            .check("127.0.0.1", &[ip("127.0.0.1")], Some(8080))
            .is_ok());
        let wild = Egress::parse(&v, Some("0.0.0.0:5051".parse().unwrap())).unwrap();
        assert!(wild.check("x", &[ip("127.0.0.7")], Some(5051)).is_err());
        let public = Egress::parse(&[], Some("10.1.1.1:5051".parse().unwrap())).unwrap();
        assert!(public.check("x", &[ip("10.1.1.1")], Some(5051)).is_err());
        assert!(public.check("x", &[ip("10.1.1.2")], Some(5051)).is_ok());
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in ["10.0.0.0/33", "::/129", "a b", "", "x/8", "10.0.0.0/x"] {
            let err = Egress::parse(&[bad.to_string()], None).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
        assert_eq!(literal("[::1]"), Some(ip("::1")));
        assert_eq!(literal("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(literal("example.com"), None);
    }

    #[test]
    fn file_uris_only_below_image_file_dirs() {
        let none = Egress::default();
        let e = none.check_file("/srv/images/a.tar.gz").unwrap_err();
        assert!(e.contains("no image_file_dirs"), "{e}");
        let dirs = Egress::default()
            .with_file_dirs(&[PathBuf::from("/srv/images")])
            .unwrap();
        assert!(dirs.check_file("/srv/images/a.tar.gz").is_ok());
        assert!(dirs.check_file("/srv/images/sub/a.tar").is_ok());
        for bad in [
            "/srv/images",
            "/srv/imagesX/a",
            "/srv/images/../../etc/shadow",
            "/run/initctl",
            "srv/images/a",
        ] {
            assert!(dirs.check_file(bad).is_err(), "{bad}");
        }
        for bad in [
            "/",
            "rel",
            "/a/../b",
            "/etc",
            "/etc/x",
            "/proc/1/root",
            "/dev",
            "/tmp",
            "/root",
            "/usr/share/images",
            "/run/x",
            "/sys",
        ] {
            let e = Egress::default().with_file_dirs(&[PathBuf::from(bad)]);
            assert!(e.is_err(), "{bad}");
        }
        for ok in [
            "/srv/images",
            "/opt/gleaner/var/demo",
            "/var/lib/images",
            "/etcx",
        ] {
            let e = Egress::default().with_file_dirs(&[PathBuf::from(ok)]);
            assert!(e.is_ok(), "{ok}");
        }
    }

    #[test]
    fn azure_nat64_and_6to4_forms_are_denied() {
        for (a, class) in [
            ("168.63.129.16", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:6464:64c8::", "cloud metadata"),
        ] {
            assert_eq!(denied_class(ip(a)), Some(class), "{a}");
        }
        for a in ["64:ff9b::808:808", "2002:808:808::1", "168.63.129.17"] {
            assert_eq!(denied_class(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn an_address_of_this_host_is_refused_unless_listed() {
        let local = [ip("10.1.1.1"), ip("fd00::5")];
        let d = Egress::default();
        for a in ["10.1.1.1", "::ffff:10.1.1.1", "fd00::5"] {
            let err = d.check_local("h", &[ip(a)], Some(80), &local).unwrap_err();
            assert!(err.contains("this host"), "{a}: {err}");
        }
        assert!(d.check_local("h", &[ip("10.1.1.2")], None, &local).is_ok());
        // NAT64 and 6to4 forms of the host's LAN address.
        for a in ["64:ff9b::a01:101", "2002:a01:101::1"] {
            assert!(d.check_local("h", &[ip(a)], None, &local).is_err(), "{a}");
        }
        let by_addr = e(&["10.1.1.1"]);
        assert!(by_addr
            .check_local("h", &[ip("10.1.1.1")], None, &local)
            .is_ok());
        let by_name = e(&["files.local:8080"]);
        assert!(by_name
            .check_local("files.local", &[ip("10.1.1.1")], Some(8080), &local)
            .is_ok());
        assert!(by_name
            .check_local("other", &[ip("10.1.1.1")], Some(8080), &local)
            .is_err());
    }

    #[test]
    fn metadata_services_off_link_local_and_v4_compatible_are_denied() {
        for (a, class) in [
            ("100.100.100.200", "cloud metadata"),
            ("::ffff:100.100.100.200", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("::1", "loopback"),
            ("::", "unspecified"),
        ] {
            assert_eq!(denied_class(ip(a)), Some(class), "{a}");
        }
        for a in [
            "100.100.100.201",
            "fd00:ec2::253",
            "2001:db8::1",
            "::1:0:0:1",
        ] {
            assert_eq!(denied_class(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn host_port_entries_allow_that_port_only() {
        let a = e(&[
            "127.0.0.1:8080",
            "[::1]:8081",
            "10.0.0.0/8:80",
            "files.local:9000",
            "[fe80::1]",
        ]);
        assert!(a.check("127.0.0.1", &[ip("127.0.0.1")], Some(8080)).is_ok());
        assert!(a
            .check("127.0.0.1", &[ip("127.0.0.1")], Some(8081))
            .is_err());
        // A name resolving to it: the port is not known there.
        assert!(a.check("other", &[ip("127.0.0.1")], None).is_err());
        assert!(a.check("::1", &[ip("::1")], Some(8081)).is_ok());
        assert!(a.check("::1", &[ip("::1")], Some(8080)).is_err());
        assert!(a.check("x", &[ip("fe80::1")], Some(1)).is_ok());
        assert!(a.check("files.local", &[ip("127.0.0.5")], None).is_ok());
        assert!(a.check_name_port("files.local", Some(9000)).is_ok());
        let err = a.check_name_port("FILES.local", Some(9001)).unwrap_err();
        assert!(err.contains("only on port 9000"), "{err}");
        assert!(a.check_name_port("elsewhere", Some(1)).is_ok());
        let plain = e(&["files.local", "files.local:9000"]);
        assert!(plain.check_name_port("files.local", Some(1)).is_ok());
        for bad in ["h:0", "h:x", "h:70000", "[::1", "[::1]:"] {
            let err = Egress::parse(&[bad.to_string()], None).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn the_own_api_in_every_form() {
        let lan = [ip("10.1.1.1"), ip("fe80::2")];
        let wild = Egress::parse(&[], Some("0.0.0.0:5051".parse().unwrap())).unwrap();
        for a in [
            "10.1.1.1",
            "::ffff:10.1.1.1",
            "127.0.0.2",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert!(
                wild.check_own("h", &[ip(a)], Some(5051), &lan).is_err(),
                "{a}"
            );
        }
        assert!(wild
            .check_own("h", &[ip("10.1.1.2")], Some(5051), &lan)
            .is_ok());
        assert!(wild
            .check_own("h", &[ip("10.1.1.1")], Some(5052), &lan)
            .is_ok());
        let one = Egress::parse(&[], Some("10.1.1.1:5051".parse().unwrap())).unwrap();
        assert!(one
            .check_own("h", &[ip("::ffff:10.1.1.1")], Some(5051), &[])
            .is_err());
        assert!(one
            .check_own("h", &[ip("10.1.1.3")], Some(5051), &lan)
            .is_ok());
        assert_eq!(one.own_port(), Some(5051));
    }
}
