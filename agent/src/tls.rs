//! Trust roots for HTTPS (image fetches), looked for only when HTTPS is
//! first used: a host without a CA store (minimal, hardened, an empty
//! chroot) starts and works over plain HTTP. Where, in order: `ca_file`
//! (config), `$SSL_CERT_FILE`, the usual bundle of each family (Debian,
//! RHEL/CentOS, SUSE, Alpine); else the bundled Mozilla set
//! (`webpki-root-certs`), logged once. A fetch that fails names what was
//! used and what was tried.

use std::path::{Path, PathBuf};

/// Usual CA bundles, Debian and RHEL/CentOS families first.
pub const CA_PATHS: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/cacert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// Where the roots came from, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum RootSource {
    File(PathBuf),
    /// Nothing found: the bundled Mozilla set. Holds what was tried.
    Bundled {
        tried: Vec<PathBuf>,
    },
}

impl std::fmt::Display for RootSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSource::File(p) => write!(f, "CA roots from {}", p.display()),
            RootSource::Bundled { tried } => {
                let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "CA roots: the bundled Mozilla set (no CA bundle at {}; set ca_file or SSL_CERT_FILE)",
                    tried.join(", ")
                )
            }
        }
    }
}

/// The first usable bundle under `root` ("/" but in tests): an explicit
/// `ca_file` must be usable; `ssl_cert_file` and the usual paths are
/// skipped when missing or holding no certificate.
pub fn find(
    root: &Path,
    ca_file: Option<&Path>,
    ssl_cert_file: Option<&Path>,
) -> Result<(Vec<reqwest::Certificate>, RootSource), TlsError> {
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    if let Some(path) = ca_file {
        let certs = read_bundle(&under(path)).map_err(|reason| TlsError::CaFile {
            path: path.to_owned(),
            reason,
        })?;
        return Ok((certs, RootSource::File(path.to_owned())));
    }
    let mut tried = Vec::new();
    let candidates = ssl_cert_file
        .map(Path::to_path_buf)
        .into_iter()
        .chain(CA_PATHS.iter().map(PathBuf::from));
    for path in candidates {
        match read_bundle(&under(&path)) {
            Ok(certs) => return Ok((certs, RootSource::File(path))),
            Err(_) => tried.push(path),
        }
    }
    let certs = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect();
    Ok((certs, RootSource::Bundled { tried }))
}

/// Real bundles are a few hundred KB; a file many times that is not one.
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;

fn read_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: a FIFO (SSL_CERT_FILE=/some/fifo) would block the
    // open until a writer came; then only regular files of a bundle's
    // size are read (not /dev/zero, not a 10 GB file).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes, more than a CA bundle's {MAX_BUNDLE_BYTES}",
            meta.len()
        ));
    }
    let mut pem = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| e.to_string())?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// `find` on this host, with `$SSL_CERT_FILE`; the bundled fallback is
/// logged (callers build one client, so once).
pub fn host_roots(
    ca_file: Option<&Path>,
) -> Result<(Vec<reqwest::Certificate>, RootSource), TlsError> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let found = find(Path::new("/"), ca_file, env.as_deref())?;
    if let RootSource::Bundled { .. } = &found.1 {
        tracing::warn!("{}", found.1);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_ca(root: &Path, at: &str) {
        let path = root.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Any real certificate will do: one of the bundled set, as PEM.
        let der = &webpki_root_certs::TLS_SERVER_ROOT_CERTS[0];
        let b64 = base64_encode(der.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        std::fs::write(path, pem).unwrap();
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn a_bundle_at_the_centos_path_only_is_found() {
        let root = tempfile::tempdir().unwrap();
        write_ca(root.path(), "/etc/pki/tls/certs/ca-bundle.crt");
        let (certs, source) = find(root.path(), None, None).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(
            source,
            RootSource::File(PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt"))
        );
    }

    #[test]
    fn nothing_found_falls_back_to_the_bundled_set_naming_the_paths_tried() {
        let root = tempfile::tempdir().unwrap();
        let (certs, source) = find(root.path(), None, Some(Path::new("/nope.pem"))).unwrap();
        assert!(certs.len() > 50, "{}", certs.len());
        let text = source.to_string();
        for p in ["/nope.pem", CA_PATHS[0], CA_PATHS[1]] {
            assert!(text.contains(p), "{text}");
        }
    }

    #[test]
    fn ssl_cert_file_comes_before_the_usual_paths_and_ca_file_before_all() {
        let root = tempfile::tempdir().unwrap();
        write_ca(root.path(), CA_PATHS[0]);
        write_ca(root.path(), "/custom/ca.pem");
        let (_, s) = find(root.path(), None, Some(Path::new("/custom/ca.pem"))).unwrap();
        assert_eq!(s, RootSource::File(PathBuf::from("/custom/ca.pem")));
        // An explicit ca_file that cannot be read is an error naming it.
        let err = find(root.path(), Some(Path::new("/missing.pem")), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ca_file /missing.pem"), "{err}");
    }

    /// Review of issue 18: SSL_CERT_FILE (or ca_file) naming a FIFO hung
    /// the lookup in open(2) forever (the CLI at every start, the agent's
    /// first HTTPS fetch), and /dev/zero or a huge file was read whole.
    #[test]
    fn a_fifo_a_device_a_directory_or_a_huge_file_is_skipped_without_hanging() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let huge = root.path().join("huge.pem");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        std::fs::create_dir(root.path().join("dir.pem")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = root.path().to_owned();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            for p in ["/fifo", "/huge.pem", "/dir.pem"] {
                let found = find(&dir, None, Some(Path::new(p))).map(|(_, s)| s);
                let explicit = find(&dir, Some(Path::new(p)), None).map(|(_, s)| s);
                out.push((p, found, explicit.map_err(|e| e.to_string())));
            }
            // /dev/zero is outside the temp root: the real one, read-only.
            let zero = find(Path::new("/"), Some(Path::new("/dev/zero")), None)
                .map(|(_, s)| s)
                .map_err(|e| e.to_string());
            let _ = tx.send((out, zero));
        });
        let (out, zero) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the CA lookup hung");
        for (p, found, explicit) in out {
            assert!(
                matches!(found, Ok(RootSource::Bundled { .. })),
                "{p}: {found:?}"
            );
            let err = explicit.unwrap_err();
            assert!(err.starts_with(&format!("ca_file {p}")), "{err}");
        }
        let err = zero.unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
