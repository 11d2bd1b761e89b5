//! A TaskSpec's `fetch` list: files downloaded into the task's sandbox
//! before its command starts (Mesos's fetcher, as Marathon's `fetch` and
//! `uris` used it). Pure: what a fetch is called in the sandbox, whether it
//! is unpacked, and its validation.

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// At most this many fetches per task: each is a download before start.
pub const MAX_FETCHES: usize = 32;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    /// `http://` or `https://`; `file://` is refused (a fetch runs as root).
    pub uri: String,
    /// Unpack a `.tar`, `.tar.gz` or `.tgz` into the sandbox (the archive
    /// stays next to its content); other names are left as they are.
    #[serde(default)]
    pub extract: bool,
    /// Mode 0755 and never extracted (else 0644).
    #[serde(default)]
    pub executable: bool,
    /// Keep the download in the agent's image cache by its digest: needs
    /// `sha256`; without one the file is downloaded every time.
    #[serde(default)]
    pub cache: bool,
    /// Name in the sandbox; default: the URI's last path segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    /// Checked against the download (lower or upper case hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What a fetched file is unpacked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    Tar,
    TarGz,
}

/// Archive names Mesos's fetcher unpacked that gleaner does not: refused
/// with `extract` rather than left packed behind the task's back.
const UNSUPPORTED: [&str; 7] = [
    ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip", ".bz2", ".xz",
];

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

/// Longest URI accepted (a presigned URL is well under it): the agent
/// keeps URIs in its records and image.json, whose size follows from it.
pub const MAX_URI_BYTES: usize = 8192;

/// `file://` with an absolute path, `http://` or `https://`, at most
/// [`MAX_URI_BYTES`].
pub fn check_uri(field: &'static str, uri: &str) -> Result<(), SpecError> {
    if uri.len() > MAX_URI_BYTES {
        return Err(bad(
            field,
            format!("longer than {MAX_URI_BYTES} bytes ({})", uri.len()),
        ));
    }
    let path = uri.strip_prefix("file://");
    if !(path.is_some() || uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(bad(
            field,
            format!("{uri:?}: use file://, http:// or https://"),
        ));
    }
    if path.is_some_and(|p| !p.starts_with('/')) {
        return Err(bad(field, "a file:// uri needs an absolute path"));
    }
    if uri.contains(['\0', '\n', '\r']) {
        return Err(bad(field, "must not contain NUL or line breaks"));
    }
    Ok(())
}

pub fn check_sha256(field: &'static str, h: &str) -> Result<(), SpecError> {
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(field, "must be 64 hex digits"));
    }
    Ok(())
}

/// One path component that stays where it is put: no `/`, not `.`/`..`.
fn check_file_name(field: &'static str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 255 {
        return Err(bad(field, format!("{name:?}: must be 1 to 255 bytes")));
    }
    if name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(bad(
            field,
            format!("{name:?}: must be a plain file name (no '/', not '.' or '..')"),
        ));
    }
    Ok(())
}

impl FetchSpec {
    /// The file's name in the sandbox: `output_file`, else the last
    /// segment of the URI's path (query and fragment dropped).
    pub fn file_name(&self) -> Result<String, SpecError> {
        if let Some(name) = &self.output_file {
            check_file_name("fetch.output_file", name)?;
            return Ok(name.clone());
        }
        let rest = self
            .uri
            .split_once("://")
            .map_or(self.uri.as_str(), |(_, r)| r);
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        // After the host (http) or the whole of it (file:///path).
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let name = path.rsplit('/').next().unwrap_or("");
        check_file_name("fetch.uri", name).map_err(|_| {
            bad(
                "fetch.uri",
                format!(
                    "{:?}: no file name at the end of its path (give output_file)",
                    self.uri
                ),
            )
        })?;
        Ok(name.to_owned())
    }

    /// How the file is unpacked, if at all; an archive kind gleaner cannot
    /// unpack is an error when `extract` asks for it.
    pub fn archive(&self) -> Result<Option<Archive>, SpecError> {
        if !self.extract || self.executable {
            return Ok(None);
        }
        let name = self.file_name()?.to_ascii_lowercase();
        if name.ends_with(".tar") {
            return Ok(Some(Archive::Tar));
        }
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            return Ok(Some(Archive::TarGz));
        }
        if let Some(ext) = UNSUPPORTED.iter().find(|e| name.ends_with(*e)) {
            return Err(bad(
                "fetch.extract",
                format!("{name}: {ext} archives are not unpacked (only .tar, .tar.gz, .tgz); set extract false"),
            ));
        }
        Ok(None)
    }

    /// The cache key, when the download is kept in the image cache.
    pub fn cached_digest(&self) -> Option<String> {
        self.sha256
            .as_ref()
            .filter(|_| self.cache)
            .map(|h| h.to_ascii_lowercase())
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_uri("fetch.uri", &self.uri)?;
        // The agent fetches as root and hands the bytes to the task: a host
        // path would give any submitter (a task's scoped token included)
        // any host file, the agent's own token among them.
        if self.uri.starts_with("file://") {
            return Err(bad(
                "fetch.uri",
                "file:// is refused for fetch (it would copy a host file, read as root, into the sandbox): serve the file over http(s)",
            ));
        }
        if let Some(h) = &self.sha256 {
            check_sha256("fetch.sha256", h)?;
        }
        self.file_name()?;
        self.archive()?;
        Ok(())
    }
}

/// The whole list: each entry valid, at most `MAX_FETCHES`, no two with
/// the same sandbox name (the second would silently replace the first).
pub fn validate_all(fetch: &[FetchSpec]) -> Result<(), SpecError> {
    if fetch.len() > MAX_FETCHES {
        return Err(bad(
            "fetch",
            format!("at most {MAX_FETCHES} entries, got {}", fetch.len()),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for f in fetch {
        f.validate()?;
        let name = f.file_name()?;
        if !names.insert(name.clone()) {
            return Err(bad(
                "fetch",
                format!("two entries are named {name:?} in the sandbox (give output_file)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(uri: &str) -> FetchSpec {
        FetchSpec {
            uri: uri.into(),
            extract: true,
            executable: false,
            cache: false,
            output_file: None,
            sha256: None,
        }
    }

    #[test]
    fn names_come_from_the_uri_path_without_query() {
        assert_eq!(
            f("http://h:1/a/b/run.sh?x=1#y").file_name().unwrap(),
            "run.sh"
        );
        assert_eq!(f("file:///srv/x.tar.gz").file_name().unwrap(), "x.tar.gz");
        let mut o = f("http://h/a/");
        assert!(o.file_name().is_err(), "no name at the end");
        o.output_file = Some("named".into());
        assert_eq!(o.file_name().unwrap(), "named");
    }

    #[test]
    fn no_name_leaves_the_sandbox() {
        for uri in ["http://h/..", "http://h/.", "http://h", "file:///a/../"] {
            assert!(f(uri).validate().is_err(), "{uri}");
        }
        for name in ["..", ".", "a/b", "/etc/passwd", "", "a\0b"] {
            let mut s = f("http://h/x");
            s.output_file = Some(name.into());
            assert!(s.validate().is_err(), "{name:?}");
        }
        // "%2e%2e" is not decoded: a literal file name in the sandbox.
        assert_eq!(f("http://h/%2e%2e").file_name().unwrap(), "%2e%2e");
    }

    #[test]
    fn archives_by_name_executable_wins() {
        assert_eq!(f("http://h/a.tar").archive().unwrap(), Some(Archive::Tar));
        assert_eq!(f("http://h/a.TGZ").archive().unwrap(), Some(Archive::TarGz));
        assert_eq!(
            f("http://h/a.tar.gz").archive().unwrap(),
            Some(Archive::TarGz)
        );
        assert_eq!(f("http://h/run.sh").archive().unwrap(), None);
        let zip = f("http://h/a.zip");
        assert!(zip.validate().unwrap_err().to_string().contains(".zip"));
        let mut plain = f("http://h/a.zip");
        plain.extract = false;
        assert!(plain.validate().is_ok());
        let mut exe = f("http://h/a.tar.gz");
        exe.executable = true;
        assert_eq!(exe.archive().unwrap(), None);
    }

    #[test]
    fn uris_and_digests() {
        assert!(f("ftp://h/x").validate().is_err());
        assert!(f("file://rel/x").validate().is_err());
        // Host files are never fetched (read as root, handed to the task).
        for uri in ["file:///etc/shadow", "file:///var/lib/gleaner/api.token"] {
            let e = f(uri).validate().unwrap_err();
            assert!(e.reason.contains("file:// is refused"), "{e:?}");
        }
        assert!(f("http://h/x\n").validate().is_err());
        let mut s = f("http://h/x");
        s.sha256 = Some("ab".into());
        assert!(s.validate().is_err());
        s.sha256 = Some("AB".repeat(32));
        s.cache = true;
        assert!(s.validate().is_ok());
        assert_eq!(s.cached_digest().unwrap(), "ab".repeat(32));
        s.cache = false;
        assert_eq!(s.cached_digest(), None);
    }

    #[test]
    fn the_list_has_unique_names_and_a_cap() {
        let two = [f("http://a/x"), f("http://b/x")];
        assert!(validate_all(&two)
            .unwrap_err()
            .to_string()
            .contains("\"x\""));
        let many: Vec<_> = (0..=MAX_FETCHES)
            .map(|i| f(&format!("http://h/{i}")))
            .collect();
        assert!(validate_all(&many).is_err());
        assert!(validate_all(&many[..MAX_FETCHES]).is_ok());
    }
}
