//! An entry's record, `image.json`: what it is, what the cache limit
//! counts (its size), when it was last used (its mtime), and, for a rootfs
//! image, which (role, URI) pairs fetched it and saw its digest.
//!
//! **A cached image is used only by a (role, URI) that fetched it.** The
//! digest is public (it is in every spec naming the image), so the digest
//! alone must not hand one tenant (a role: scoped tokens are bound to one)
//! another's image: a task whose pair is not recorded first downloads its
//! own URI and the bytes must hash to the digest (a proof; the unpacked
//! image is reused, not unpacked again). Mesos's fetcher cache keys its
//! entries by user and URI for the same reason.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Pairs kept per image. Past it the oldest proof is dropped: that pair
/// proves again on its next use, so the bound costs a download, never
/// access.
pub const MAX_FETCHERS: usize = 64;

/// Pairs kept per role: past it that role's own oldest proof is dropped,
/// so one role proving many URIs (`?1`, `?2`...) cannot push the other
/// roles' proofs out.
pub const MAX_FETCHERS_PER_ROLE: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub uri: String,
    pub sha256: String,
    /// Unpacked size (a fetched file: its size), what the cache limit counts.
    pub bytes: u64,
    pub archive_bytes: u64,
    /// Who fetched this image and saw its digest, oldest first (rootfs
    /// images; a cached `fetch` file is keyed by its pair in its name).
    /// Absent from records older than the rule: nobody, so the next user
    /// of the image proves its URI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetched_by: Vec<Fetcher>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetcher {
    pub role: String,
    pub uri: String,
}

impl ImageMeta {
    /// Whether a task of `role` naming the image by `uri` may use it as
    /// cached. Exact strings: another spelling of the URI proves again.
    pub fn proven(&self, role: &str, uri: &str) -> bool {
        self.fetched_by
            .iter()
            .any(|f| f.role == role && f.uri == uri)
    }

    /// Records that `role` fetched the image from `uri`. Returns whether
    /// the record changed.
    pub fn record(&mut self, role: &str, uri: &str) -> bool {
        if self.proven(role, uri) {
            return false;
        }
        self.fetched_by.push(Fetcher {
            role: role.to_owned(),
            uri: uri.to_owned(),
        });
        let mine = self.fetched_by.iter().filter(|f| f.role == role).count();
        if mine > MAX_FETCHERS_PER_ROLE {
            let oldest = self.fetched_by.iter().position(|f| f.role == role);
            if let Some(i) = oldest {
                self.fetched_by.remove(i);
            }
        }
        let over = self.fetched_by.len().saturating_sub(MAX_FETCHERS);
        self.fetched_by.drain(..over);
        true
    }
}

/// The record of the entry at `home`, if it has a readable one.
pub fn read(home: &Path) -> Option<ImageMeta> {
    let bytes = std::fs::read(home.join("image.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ImageMeta {
        ImageMeta {
            uri: "http://a/i.tar.gz".into(),
            sha256: "ab".repeat(32),
            bytes: 10,
            archive_bytes: 5,
            fetched_by: Vec::new(),
        }
    }

    #[test]
    fn only_a_recorded_role_and_uri_pair_is_proven() {
        let mut m = meta();
        assert!(!m.proven("batch", "http://a/i.tar.gz"), "nobody yet");
        assert!(m.record("batch", "http://a/i.tar.gz"));
        assert!(!m.record("batch", "http://a/i.tar.gz"), "recorded once");
        assert!(m.proven("batch", "http://a/i.tar.gz"));
        // Another tenant with the same URI, the same tenant elsewhere.
        assert!(!m.proven("analytics", "http://a/i.tar.gz"));
        assert!(!m.proven("batch", "http://b/i.tar.gz"));
        assert!(!m.proven("batch", "http://a/i.tar.gz?x"));
        assert_eq!(m.fetched_by.len(), 1);
    }

    /// A record written before the rule has no list: nobody is proven, and
    /// it still parses (its size still counts in the LRU).
    #[test]
    fn an_older_record_proves_nobody() {
        let old = r#"{"uri": "http://a/i.tar.gz", "sha256": "00", "bytes": 7, "archive_bytes": 3}"#;
        let m: ImageMeta = serde_json::from_str(old).unwrap();
        assert_eq!(m.bytes, 7);
        assert!(!m.proven("default", "http://a/i.tar.gz"));
        // Written back with its list; a file entry's record stays as it was.
        let mut with = m.clone();
        with.record("default", "http://a/i.tar.gz");
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains("fetched_by"), "{json}");
        assert!(!serde_json::to_string(&m).unwrap().contains("fetched_by"));
        let back: ImageMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn the_list_is_bounded_and_drops_the_oldest_proof() {
        let mut m = meta();
        // Many roles of one pair each: the oldest overall goes.
        for i in 0..MAX_FETCHERS + 3 {
            m.record(&format!("r{i}"), "http://h/i");
        }
        assert_eq!(m.fetched_by.len(), MAX_FETCHERS);
        for i in 0..3 {
            assert!(!m.proven(&format!("r{i}"), "http://h/i"), "{i} kept");
        }
        assert!(m.proven(&format!("r{}", MAX_FETCHERS + 2), "http://h/i"));
        assert!(m.proven("r3", "http://h/i"));
    }

    /// Review: one role proving many URIs of a public image pushed every
    /// other role's proof out (their next launch had to download again,
    /// and failed where their URI had expired).
    #[test]
    fn one_role_cannot_push_another_roles_proof_out() {
        let mut m = meta();
        m.record("victim", "http://h/i");
        for i in 0..1000 {
            m.record("noisy", &format!("http://h/i?{i}"));
        }
        assert!(m.proven("victim", "http://h/i"));
        let noisy = m.fetched_by.iter().filter(|f| f.role == "noisy").count();
        assert_eq!(noisy, MAX_FETCHERS_PER_ROLE);
        assert!(m.proven("noisy", "http://h/i?999"));
        assert!(!m.proven("noisy", "http://h/i?0"));
    }

    proptest::proptest! {
        /// Whatever is recorded: only recorded pairs are proven, the
        /// latest always is, none twice, never more than the bound.
        #[test]
        fn proven_means_recorded(
            ops in proptest::collection::vec((0u8..3, 0u8..40), 0..200),
            probe in (0u8..3, 0u8..40),
        ) {
            let pair = |(r, u): (u8, u8)| (format!("role{r}"), format!("http://h/{u}"));
            let mut m = meta();
            for &op in &ops {
                let (r, u) = pair(op);
                m.record(&r, &u);
                proptest::prop_assert!(m.proven(&r, &u));
                proptest::prop_assert!(m.fetched_by.len() <= MAX_FETCHERS);
                proptest::prop_assert!(
                    m.fetched_by.iter().filter(|f| f.role == r).count() <= MAX_FETCHERS_PER_ROLE
                );
            }
            let (r, u) = pair(probe);
            if m.proven(&r, &u) {
                proptest::prop_assert!(ops.contains(&probe));
            }
            let mut seen = std::collections::HashSet::new();
            proptest::prop_assert!(m.fetched_by.iter().all(|f| seen.insert((&f.role, &f.uri))));
        }
    }
}
