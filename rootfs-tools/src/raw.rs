//! Archives written entry by entry, without the checks of `tar::Builder`
//! (which refuses `..` and absolute names): how tests, benchmarks and the
//! fuzz corpus make the hostile archives the unpacker must refuse.

use std::fs;
use std::io;
use std::path::Path;

pub use tar::EntryType;

/// One entry: name, kind, link target, content, mode.
pub type RawEntry<'a> = (&'a str, EntryType, &'a str, &'a [u8], u32);

/// Writes `entries` as a gzip'd tar to `path`, names as given (old-style
/// headers: names and link targets up to 100 bytes).
pub fn write_raw_archive(path: &Path, entries: &[RawEntry]) -> io::Result<()> {
    let gz = flate2::write::GzEncoder::new(fs::File::create(path)?, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, link, data, mode) in entries {
        if name.len() > 100 || link.len() > 100 {
            return Err(io::Error::other(format!(
                "{name}: name or link over 100 bytes"
            )));
        }
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data)?;
    }
    b.into_inner()?.finish()?;
    Ok(())
}
