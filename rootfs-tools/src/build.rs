//! Reproducible images: entries sorted by path, mtime 0, owner 0:0, gzip
//! without a name or time stamp. Same inputs, same bytes, same sha256.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

use crate::image::{sha256_file, MANIFEST};

/// What goes into the image at one path.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir(u32),
    File { data: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

/// Where the image's files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory tree.
    Dir(PathBuf),
    /// A minimal rootfs from the host's static busybox.
    Busybox,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |err| BuildError::Io {
        path: path.to_owned(),
        err,
    }
}

/// Builds the image at `output`; returns its sha256.
pub fn build(
    source: &Source,
    adds: &[(PathBuf, PathBuf)],
    env: &BTreeMap<String, String>,
    output: &Path,
) -> Result<String, BuildError> {
    let mut tree: BTreeMap<PathBuf, Node> = BTreeMap::new();
    match source {
        Source::Dir(dir) => add_tree(&mut tree, dir, Path::new(""))?,
        Source::Busybox => busybox(&mut tree)?,
    }
    for dir in ["proc", "dev", "tmp", "sandbox", ".gleaner"] {
        tree.entry(PathBuf::from(dir))
            .or_insert(Node::Dir(if dir == "tmp" { 0o1777 } else { 0o755 }));
    }
    for (src, dest) in adds {
        let dest = relative(dest)?;
        let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
        if meta.is_dir() {
            add_tree(&mut tree, src, &dest)?;
        } else {
            add_parents(&mut tree, &dest);
            tree.insert(dest, node_of(src, &meta)?);
        }
    }
    let manifest = serde_json::json!({"env": env});
    tree.insert(
        PathBuf::from(MANIFEST),
        Node::File {
            data: manifest.to_string().into_bytes(),
            mode: 0o644,
        },
    );
    write(&tree, output)?;
    sha256_file(output).map_err(io_err(output))
}

fn relative(dest: &Path) -> Result<PathBuf, BuildError> {
    let rel: PathBuf = dest
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    if rel.as_os_str().is_empty()
        || dest
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BuildError::Invalid(format!(
            "--add destination {} is not a path inside the image",
            dest.display()
        )));
    }
    Ok(rel)
}

fn add_parents(tree: &mut BTreeMap<PathBuf, Node>, path: &Path) {
    let mut p = path.parent();
    while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
        tree.entry(dir.to_owned()).or_insert(Node::Dir(0o755));
        p = dir.parent();
    }
}

fn node_of(path: &Path, meta: &fs::Metadata) -> Result<Node, BuildError> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Ok(Node::Symlink(fs::read_link(path).map_err(io_err(path))?));
    }
    if ft.is_dir() {
        return Ok(Node::Dir(meta.permissions().mode() & 0o7777));
    }
    if ft.is_file() {
        return Ok(Node::File {
            data: fs::read(path).map_err(io_err(path))?,
            mode: meta.permissions().mode() & 0o7777,
        });
    }
    Err(BuildError::Invalid(format!(
        "{}: only files, directories and symlinks go into an image",
        path.display()
    )))
}

fn add_tree(tree: &mut BTreeMap<PathBuf, Node>, dir: &Path, at: &Path) -> Result<(), BuildError> {
    if !at.as_os_str().is_empty() {
        add_parents(tree, at);
        tree.insert(at.to_owned(), Node::Dir(0o755));
    }
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let dest = at.join(e.file_name());
        if meta.is_dir() {
            add_tree(tree, &path, &dest)?;
            if let Node::Dir(_) = tree[&dest] {
                tree.insert(dest, Node::Dir(meta.permissions().mode() & 0o7777));
            }
        } else {
            tree.insert(dest, node_of(&path, &meta)?);
        }
    }
    Ok(())
}

fn busybox(tree: &mut BTreeMap<PathBuf, Node>) -> Result<(), BuildError> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| {
            BuildError::Invalid("no busybox on this host (apt-get install busybox-static)".into())
        })?;
    tree.insert("bin".into(), Node::Dir(0o755));
    tree.insert("etc".into(), Node::Dir(0o755));
    tree.insert(
        "bin/busybox".into(),
        Node::File {
            data: fs::read(bb).map_err(io_err(bb))?,
            mode: 0o755,
        },
    );
    let list = std::process::Command::new(bb)
        .arg("--list")
        .output()
        .map_err(io_err(bb))?;
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        tree.insert(
            Path::new("bin").join(applet),
            Node::Symlink("busybox".into()),
        );
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    tree.insert(
        "etc/passwd".into(),
        Node::File {
            data: passwd.into(),
            mode: 0o644,
        },
    );
    tree.insert(
        "etc/group".into(),
        Node::File {
            data: "root:x:0:\nnogroup:x:65534:\n".into(),
            mode: 0o644,
        },
    );
    Ok(())
}

fn write(tree: &BTreeMap<PathBuf, Node>, output: &Path) -> Result<(), BuildError> {
    let file = fs::File::create(output).map_err(io_err(output))?;
    let gz = GzBuilder::new().mtime(0).write(file, Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for (path, node) in tree {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let result = match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, path, io::empty())
            }
            Node::File { data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, data.as_slice())
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target)
            }
        };
        result.map_err(io_err(path))?;
    }
    let gz = tar.into_inner().map_err(io_err(output))?;
    gz.finish()
        .map_err(io_err(output))?
        .flush()
        .map_err(io_err(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_sha256_and_it_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("opt/app")).unwrap();
        fs::write(src.join("opt/app/run.sh"), "echo hi\n").unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("opt/app/start")).unwrap();
        let extra = dir.path().join("extra.txt");
        fs::write(&extra, "x").unwrap();
        let env = BTreeMap::from([("MODE".to_string(), "batch".to_string())]);
        let adds = [(extra.clone(), PathBuf::from("/etc/extra.txt"))];
        let a = build(
            &Source::Dir(src.clone()),
            &adds,
            &env,
            &dir.path().join("a.tar.gz"),
        )
        .unwrap();
        // Touch the inputs' times: the image must not change.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(src.join("opt/app/run.sh"), "echo hi\n").unwrap();
        let b = build(&Source::Dir(src), &adds, &env, &dir.path().join("b.tar.gz")).unwrap();
        assert_eq!(a, b);
        let info = crate::inspect(&dir.path().join("a.tar.gz")).unwrap();
        assert_eq!(info.sha256, a);
        assert_eq!(info.manifest.unwrap()["env"]["MODE"], "batch");
        let root = dir.path().join("root");
        crate::unpack(&dir.path().join("a.tar.gz"), &root).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/extra.txt")).unwrap(), "x");
        assert_eq!(
            fs::read_link(root.join("opt/app/start")).unwrap(),
            Path::new("run.sh")
        );
        for d in ["proc", "dev", "tmp", "sandbox"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert!(build(
            &Source::Dir(dir.path().join("nope")),
            &[],
            &env,
            &dir.path().join("c.tar.gz")
        )
        .is_err());
        let bad = [(extra, PathBuf::from("../x"))];
        assert!(
            build(&Source::Busybox, &bad, &env, &dir.path().join("d.tar.gz"))
                .unwrap_err()
                .to_string()
                .contains("--add")
        );
    }
}
