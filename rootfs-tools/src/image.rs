//! Reading images: sha256, entries, manifest.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Path of the manifest inside an image.
pub const MANIFEST: &str = ".gleaner/manifest.json";

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub sha256: String,
    pub compressed_bytes: u64,
    pub unpacked_bytes: u64,
    pub entries: usize,
    pub manifest: Option<serde_json::Value>,
}

pub fn inspect(path: &Path) -> io::Result<ImageInfo> {
    let compressed_bytes = std::fs::metadata(path)?.len();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(path)?));
    let (mut entries, mut unpacked_bytes, mut manifest) = (0, 0, None);
    for entry in archive.entries()? {
        let mut entry = entry?;
        entries += 1;
        unpacked_bytes += entry.header().size()?;
        if entry.path()?.as_ref() == Path::new(MANIFEST) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = serde_json::from_str(&text).ok();
        }
    }
    Ok(ImageInfo {
        sha256: sha256_file(path)?,
        compressed_bytes,
        unpacked_bytes,
        entries,
        manifest,
    })
}
