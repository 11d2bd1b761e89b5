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

/// Writes a gzip'd tar holding one file, `name`, of `mib` MiB of zeros: a
/// decompression bomb of about a thousandth of its unpacked size, made in
/// time proportional to that (each MiB is deflated once, with a full flush
/// so that its bytes stand alone, and repeated). A valid gzip: CRC and size
/// in its trailer.
pub fn write_zero_bomb(path: &Path, name: &str, mib: u64) -> io::Result<()> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    use std::io::Write;
    fn deflate(data: &[u8], flush: FlushCompress) -> io::Result<Vec<u8>> {
        let mut c = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(data.len() / 256 + 1024);
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(64 << 10);
            }
            let before = c.total_in();
            let status = c
                .compress_vec(input, &mut out, flush)
                .map_err(io::Error::other)?;
            input = &input[(c.total_in() - before) as usize..];
            if input.is_empty()
                && (status == flate2::Status::StreamEnd
                    || (flush != FlushCompress::Finish && out.capacity() > out.len()))
            {
                return Ok(out);
            }
        }
    }
    let size = mib << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path(name)?;
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    let chunk = vec![0u8; 1 << 20];
    let end = [0u8; 1024];
    let mut crc = Crc::new();
    crc.update(h.as_bytes());
    let mut chunk_crc = Crc::new();
    chunk_crc.update(&chunk);
    for _ in 0..mib {
        crc.combine(&chunk_crc);
    }
    crc.update(&end);
    let (head, zeros, tail) = (
        deflate(h.as_bytes(), FlushCompress::Full)?,
        deflate(&chunk, FlushCompress::Full)?,
        deflate(&end, FlushCompress::Finish)?,
    );
    let mut f = io::BufWriter::new(fs::File::create(path)?);
    f.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    f.write_all(&head)?;
    for _ in 0..mib {
        f.write_all(&zeros)?;
    }
    f.write_all(&tail)?;
    f.write_all(&crc.sum().to_le_bytes())?;
    f.write_all(&(crc.amount()).to_le_bytes())?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bomb is a valid gzip'd tar (checked by the system's gzip and
    /// tar where present, and by our unpacker) of the size it says.
    #[test]
    fn a_zero_bomb_is_a_valid_archive_of_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = dir.path().join("bomb.tar.gz");
        write_zero_bomb(&bomb, "zeros", 5).unwrap();
        let packed = fs::metadata(&bomb).unwrap().len();
        assert!(packed < 16 << 10, "{packed} bytes");
        for (tool, args) in [("gzip", vec!["-t"]), ("tar", vec!["-tzf"])] {
            if let Ok(out) = std::process::Command::new(tool)
                .args(&args)
                .arg(&bomb)
                .output()
            {
                assert!(out.status.success(), "{tool}: {out:?}");
            }
        }
        let got = crate::unpack(&bomb, &dir.path().join("root")).unwrap();
        assert_eq!(got.bytes, 5 << 20);
        let data = fs::read(dir.path().join("root/zeros")).unwrap();
        assert_eq!(data.len(), 5 << 20);
        assert!(data.iter().all(|&b| b == 0));
    }
}
