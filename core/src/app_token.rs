//! Scoped credentials of Marathon app instances (FLEET.md "Marathon API"):
//! a task of an app labelled `GLEANER_API_ACCESS=own-group` finds
//! `MARATHON_URL` and `GLEANER_TOKEN` in its environment and may manage the
//! apps of its own group with that token, nothing else. Pure: no HTTP
//! types, no I/O, no clock.
//!
//! The token is `gma1:<create revision>:<app id>:<mac>`, the MAC an
//! HMAC-SHA256 of the app id and the create revision of its `apps/` key
//! under a key derived from the scheduler's admin token. Any replica
//! checks it without a stored secret, and it ends with the app: an app
//! deleted and created again has a new create revision.

use sha2::{Digest, Sha256};

use crate::auth::{tokens_equal, Denied};

/// The one label value that asks for a token (as the agent's
/// `api_access.scope`).
pub const OWN_GROUP: &str = "own-group";
const VERSION: &str = "gma1";

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The signing key of app tokens, derived from the admin token (changing
/// the admin token revokes every app token).
pub fn derive_key(admin_token: &str) -> [u8; 32] {
    hmac_sha256(admin_token.as_bytes(), b"gleaner marathon app tokens v1")
}

fn mac(key: &[u8; 32], app: &str, created: i64) -> String {
    hex(&hmac_sha256(key, format!("{app}\n{created}").as_bytes()))
}

/// The token of every instance of `app` (whose key was created at
/// revision `created`).
pub fn mint(key: &[u8; 32], app: &str, created: i64) -> String {
    format!("{VERSION}:{created}:{app}:{}", mac(key, app, created))
}

/// The app and create revision a genuine token was minted for; `None` for
/// anything else. Whether that app still exists is the caller's check.
pub fn verify(key: &[u8; 32], token: &str) -> Option<(String, i64)> {
    let rest = token.strip_prefix(VERSION)?.strip_prefix(':')?;
    let (created, rest) = rest.split_once(':')?;
    let (app, given) = rest.rsplit_once(':')?;
    let created: i64 = created.parse().ok()?;
    tokens_equal(given, &mac(key, app, created)).then(|| (app.to_owned(), created))
}

/// What an app's token reaches: apps whose id starts with `prefix` (the
/// app's group, `/team/`), or only the app itself when it sits at the
/// root (a root-level app's group would be every app); new or changed
/// apps only in the app's own role and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppScope {
    pub app: String,
    /// `"/team/"`; for a root-level app its own id.
    pub prefix: String,
    pub role: String,
    pub queue: String,
}

impl AppScope {
    pub fn for_app(app: &str, role: &str, queue: &str) -> AppScope {
        let prefix = match app.rfind('/') {
            Some(0) | None => app.to_owned(),
            Some(i) => app[..=i].to_owned(),
        };
        AppScope {
            app: app.to_owned(),
            prefix,
            role: role.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// May this scope see and act on the app with this id?
    pub fn covers(&self, id: &str) -> bool {
        if self.prefix.ends_with('/') {
            id.starts_with(&self.prefix)
        } else {
            id == self.prefix
        }
    }
}

/// What an app's token asks to do.
#[derive(Debug, Clone, Copy)]
pub enum AppAction<'a> {
    /// `/ping`, `/v2/info`, `/v2/leader`; listings (filtered by
    /// [`AppScope::covers`]).
    Public,
    /// Read an app, its tasks, its deployments.
    Read { app: &'a str },
    /// Scale, restart, kill tasks, delete, roll back.
    Change { app: &'a str },
    /// Create or replace a definition that runs in `role` and `queue`.
    Define {
        app: &'a str,
        role: &'a str,
        queue: &'a str,
    },
    /// The native API, metrics, the event stream, the console.
    Admin { what: &'a str },
}

/// The one rule for app tokens.
pub fn authorize(scope: &AppScope, action: &AppAction) -> Result<(), Denied> {
    let deny = |what: String| {
        Err(Denied(format!(
            "token of app {} (scope: apps {}{}): {what}",
            scope.app,
            scope.prefix,
            if scope.prefix.ends_with('/') { "*" } else { "" }
        )))
    };
    match *action {
        AppAction::Public => Ok(()),
        AppAction::Read { app } | AppAction::Change { app } if scope.covers(app) => Ok(()),
        AppAction::Read { app } | AppAction::Change { app } => {
            deny(format!("app {app} is outside the scope"))
        }
        AppAction::Define { app, .. } if !scope.covers(app) => {
            deny(format!("app {app} is outside the scope"))
        }
        AppAction::Define { role, .. } if role != scope.role => {
            deny(format!("role {role:?} is not the app's own role"))
        }
        AppAction::Define { queue, .. } if queue != scope.queue => {
            deny(format!("queue {queue:?} is not the app's own queue"))
        }
        AppAction::Define { .. } => Ok(()),
        AppAction::Admin { what } => deny(format!("{what} is for admins")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1 and 2.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn tokens_verify_only_for_their_app_and_key() {
        let k = derive_key("admin-secret");
        let t = mint(&k, "/team/sched", 42);
        assert_eq!(verify(&k, &t), Some(("/team/sched".to_owned(), 42)));
        assert_eq!(verify(&derive_key("other"), &t), None);
        // Another app or revision with the same MAC does not pass.
        let forged = t.replace("/team/sched", "/other/x");
        assert_eq!(verify(&k, &forged), None);
        assert_eq!(verify(&k, &t.replace(":42:", ":43:")), None);
        for bad in [
            "",
            "gma1",
            "gma1:x:/a:00",
            "admin-secret",
            &t[..t.len() - 1],
        ] {
            assert_eq!(verify(&k, bad), None, "{bad}");
        }
    }

    #[test]
    fn scope_is_the_group_or_the_app_at_the_root() {
        let s = AppScope::for_app("/team/sched", "batch", "marathon");
        assert_eq!(s.prefix, "/team/");
        assert!(s.covers("/team/workers") && s.covers("/team/sched") && s.covers("/team/a/b"));
        assert!(!s.covers("/teamx/w") && !s.covers("/other") && !s.covers("/team"));
        let root = AppScope::for_app("/sched", "batch", "marathon");
        assert!(root.covers("/sched") && !root.covers("/sched2") && !root.covers("/x"));
        assert!(!root.covers("/sched/w"));
    }

    #[test]
    fn the_rule() {
        let s = AppScope::for_app("/team/sched", "batch", "marathon");
        let ok = |a: AppAction| authorize(&s, &a).is_ok();
        assert!(ok(AppAction::Public));
        assert!(ok(AppAction::Read { app: "/team/w" }));
        assert!(ok(AppAction::Change { app: "/team/w" }));
        assert!(!ok(AppAction::Read { app: "/prod/db" }));
        assert!(!ok(AppAction::Change { app: "/prod/db" }));
        let define = |app, role, queue| AppAction::Define { app, role, queue };
        assert!(ok(define("/team/w", "batch", "marathon")));
        assert!(!ok(define("/prod/w", "batch", "marathon")));
        assert!(!ok(define("/team/w", "prod", "marathon")));
        assert!(!ok(define("/team/w", "batch", "urgent")));
        let e = authorize(&s, &AppAction::Admin { what: "/v1/jobs" }).unwrap_err();
        assert!(e.0.contains("/v1/jobs is for admins"), "{e}");
        assert!(e.0.contains("/team/*"), "{e}");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// A token never reaches an app outside its group, and a token
            /// changed anywhere does not verify.
            #[test]
            fn scope_and_mac_hold(own in "(/[a-z]{1,3}){1,3}", other in "(/[a-z]{1,3}){1,3}",
                                  flip in 0usize..200) {
                let s = AppScope::for_app(&own, "batch", "q");
                let allowed = authorize(&s, &AppAction::Change { app: &other }).is_ok();
                let group = own.rfind('/').filter(|i| *i > 0).map(|i| &own[..=i]);
                let want = match group {
                    Some(g) => other.starts_with(g),
                    None => other == own,
                };
                prop_assert_eq!(allowed, want);
                let k = derive_key("k");
                let t = mint(&k, &own, 7);
                let i = flip % t.len();
                let mut b = t.clone().into_bytes();
                b[i] = if b[i] == b'0' { b'1' } else { b'0' };
                let changed = String::from_utf8(b).unwrap();
                if changed != t {
                    prop_assert_eq!(verify(&k, &changed), None);
                }
            }
        }
    }
}
