//! gleaner-rootfs: reproducible rootfs images (tar.gz + sha256) and a safe
//! unpacker. `build` writes sorted entries with fixed mtimes and owners, so
//! the same inputs give the same sha256; `unpack` refuses anything that
//! could touch the host outside the target directory.

pub mod build;
pub mod image;
pub mod raw;
pub mod unpack;

pub use build::{build, Source};
pub use image::{inspect, sha256_file, ImageInfo};
pub use unpack::{
    unpack, unpack_gz_with, unpack_tar, unpack_tar_with, unpack_with, Budget, UnpackError,
};
