//! Users come from the rootfs's own /etc/passwd: the static binary has no
//! NSS, and the host's users mean nothing inside the task anyway.

use std::path::Path;

pub const NOBODY: (u32, u32) = (65534, 65534);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {user:?} is not in {passwd}")]
    Unknown { user: String, passwd: String },
}

/// Resolves `user` (a name or a numeric uid) to (uid, gid) in `rootfs`.
/// `nobody` falls back to 65534 when the rootfs has no entry.
pub fn resolve(rootfs: &Path, user: &str) -> Result<(u32, u32), UserError> {
    let passwd_path = rootfs.join("etc/passwd");
    let passwd = std::fs::read_to_string(&passwd_path).unwrap_or_default();
    if let Some(ids) = lookup(&passwd, user) {
        return Ok(ids);
    }
    if let Ok(uid) = user.parse::<u32>() {
        return Ok((uid, uid));
    }
    if user == "nobody" {
        return Ok(NOBODY);
    }
    Err(UserError::Unknown {
        user: user.to_owned(),
        passwd: passwd_path.display().to_string(),
    })
}

/// Finds a user by name or uid in passwd(5) text.
pub fn lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let (name, _pw, uid, gid) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let (uid, gid) = (uid.parse().ok()?, gid.parse().ok()?);
        (name == user || user.parse::<u32>() == Ok(uid)).then_some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65533:nobody:/:/bin/false\nbad line\napp:x:1000:1001::/home/app:/bin/sh\n";

    #[test]
    fn looks_up_names_and_uids() {
        assert_eq!(lookup(PASSWD, "app"), Some((1000, 1001)));
        assert_eq!(lookup(PASSWD, "1000"), Some((1000, 1001)));
        assert_eq!(lookup(PASSWD, "nobody"), Some((65534, 65533)));
        assert_eq!(lookup(PASSWD, "ghost"), None);
    }

    #[test]
    fn resolve_falls_back_for_nobody_and_numbers() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve(empty.path(), "nobody"), Ok(NOBODY));
        assert_eq!(resolve(empty.path(), "4242"), Ok((4242, 4242)));
        assert!(resolve(empty.path(), "ghost")
            .unwrap_err()
            .to_string()
            .contains("ghost"));
    }
}
