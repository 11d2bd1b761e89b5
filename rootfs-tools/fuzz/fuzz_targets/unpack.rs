//! Any byte string as a tar stream: the unpacker may refuse it, but must
//! never write outside its target nor panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let base = tempdir();
    let dest = base.join("root");
    let _ = gleaner_rootfs::unpack_tar(data, &dest);
    let outside: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(outside.iter().all(|n| n == "root"), "wrote outside: {outside:?}");
    std::fs::remove_dir_all(&base).unwrap();
});

/// A fresh directory per input, on tmpfs when there is one.
fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let root = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = Path::new(root).join(format!(
        "gleaner-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
