//! Task groups as pods: what a group gives its members (a shared volume at
//! one path, optionally one network namespace) and the pure rules over
//! them: the shared path's validation, the members' admissibility,
//! sidecars, and the group's state. No I/O.

use serde::{Deserialize, Serialize};

use crate::spec::{Network, TaskSpec};
use crate::status::TaskState;

/// Where the shared volume appears when the group names no path.
pub const DEFAULT_SHARED_PATH: &str = "/shared";
const MAX_SHARED_PATH: usize = 256;
/// The task's own mounts and the kernel's: a shared volume there would hide
/// (or be hidden by) what the task init mounts.
const RESERVED: [&str; 5] = ["/proc", "/dev", "/sys", "/sandbox", "/tmp"];
/// The image's programs, libraries and configuration: a volume every
/// member can write must not be on, above (hiding them) or below them (a
/// sidecar would plant `/usr/local/bin/python`, a CA certificate in
/// `/etc/ssl/certs` or a script in `/etc/profile.d` that the main member
/// trusts). `/opt` is where images install software (`/opt/conda/bin`).
const SYSTEM: [&str; 11] = [
    "/etc", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/root", "/boot",
    "/opt",
];
/// Homes of data, not code: a volume below them is the usual place
/// (`/var/lib/app`, `/srv/data`, `/run/app`, `/home/app`), but on or above
/// them it would hide every other service's or user's directory.
const DATA_ROOTS: [&str; 4] = ["/var/lib", "/home", "/srv", "/run"];

/// `"network"` of a group: `host` (each member as its own spec says) or
/// `group` (one namespace for the whole group, only `lo` up).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupNetwork {
    #[default]
    Host,
    Group,
}

impl GroupNetwork {
    pub fn is_host(&self) -> bool {
        *self == GroupNetwork::Host
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct GroupError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> GroupError {
    GroupError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a shared volume path and returns it normalised (no empty
/// components, no trailing slash): absolute, no `.` or `..`, not the root,
/// not on or below a reserved mount.
pub fn check_shared_path(path: &str) -> Result<String, GroupError> {
    const FIELD: &str = "shared_path";
    if !path.starts_with('/') {
        return Err(bad(FIELD, format!("must be absolute, got {path:?}")));
    }
    if path.len() > MAX_SHARED_PATH {
        return Err(bad(FIELD, format!("longer than {MAX_SHARED_PATH} bytes")));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(bad(FIELD, "must not contain control characters"));
    }
    let mut parts = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(bad(FIELD, format!("must not contain {c:?} components")));
        }
        parts.push(c);
    }
    if parts.is_empty() {
        return Err(bad(FIELD, "must not be the root"));
    }
    let normal = format!("/{}", parts.join("/"));
    for r in RESERVED {
        if normal == r || normal.starts_with(&format!("{r}/")) {
            return Err(bad(
                FIELD,
                format!("{normal} is on {r}, which the task's init mounts"),
            ));
        }
    }
    let on_or_above = |d: &str| d == normal || d.starts_with(&format!("{normal}/"));
    if let Some(d) = SYSTEM.iter().find(|d| on_or_above(d)) {
        let how = if *d == normal { "is" } else { "holds" };
        return Err(bad(
            FIELD,
            format!("{normal} {how} the system directory {d}, which the volume would hide"),
        ));
    }
    if let Some(d) = SYSTEM.iter().find(|d| normal.starts_with(&format!("{d}/"))) {
        return Err(bad(
            FIELD,
            format!("{normal} is below the system directory {d}, where a member could plant what another one runs or trusts"),
        ));
    }
    if let Some(d) = DATA_ROOTS.iter().find(|d| on_or_above(d)) {
        let how = if *d == normal { "is" } else { "holds" };
        return Err(bad(
            FIELD,
            format!("{normal} {how} the system directory {d}, which the volume would hide: use a directory below it"),
        ));
    }
    Ok(normal)
}

/// Checks the members of a group against its options: at least one main
/// (non-sidecar) member; in a `group` network no member asks for its own
/// network or for API access (the agent is reached over the host's TCP).
pub fn check_members(network: GroupNetwork, specs: &[TaskSpec]) -> Result<(), GroupError> {
    if !specs.is_empty() && specs.iter().all(|s| s.sidecar) {
        return Err(bad(
            "tasks",
            "a group needs at least one member that is not a sidecar",
        ));
    }
    check_network_members(network, specs.iter())
}

/// The per-member half of [`check_members`] (a fleet gang's members may
/// arrive in several submissions: each is checked alone).
pub fn check_network_members<'a>(
    network: GroupNetwork,
    specs: impl Iterator<Item = &'a TaskSpec>,
) -> Result<(), GroupError> {
    if network == GroupNetwork::Group {
        for (i, s) in specs.enumerate() {
            if s.network != Network::Host {
                return Err(bad(
                    format!("tasks[{i}].network"),
                    "the group's network \"group\" is every member's; leave it out",
                ));
            }
            if s.api_access.is_some() {
                return Err(bad(
                    format!("tasks[{i}].api_access"),
                    "needs the host's network (the agent is reached over TCP), and the group's network is \"group\"",
                ));
            }
            // The agent probes and the ports live in the host's network;
            // the members do not (a probe would hit whatever host service
            // holds the port).
            if !s.ports.is_empty() {
                return Err(bad(
                    format!("tasks[{i}].ports"),
                    "host ports are of the host's network, and the group's network is \"group\"",
                ));
            }
            if let Some(c) = s
                .health_checks
                .iter()
                .find(|c| c.protocol != crate::health::Protocol::Command)
            {
                return Err(bad(
                    format!("tasks[{i}].health_checks"),
                    format!(
                        "{:?} checks are probed from the host's network, and the group's network is \"group\": use COMMAND",
                        c.protocol
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// One member as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub id: &'a str,
    pub sidecar: bool,
    pub state: TaskState,
}

/// Sidecars to stop now: the unfinished ones, once every main member has
/// ended. Nothing while a main member runs or waits, nor in a group without
/// main members (written before sidecars existed).
pub fn sidecars_to_stop<'a>(members: &[Member<'a>]) -> Vec<&'a str> {
    let mut mains = members.iter().filter(|m| !m.sidecar).peekable();
    if mains.peek().is_none() || mains.any(|m| !m.state.is_final()) {
        return Vec::new();
    }
    members
        .iter()
        .filter(|m| m.sidecar && !m.state.is_final())
        .map(|m| m.id)
        .collect()
}

/// The group's state, from its main members only: the most active of them
/// while one has not ended (RUNNING, then STAGING, then QUEUED); once all
/// have, FINISHED if every one finished, else the state of the first (in
/// the order given) that did not. `None` for no main member.
pub fn group_state(members: &[Member<'_>]) -> Option<TaskState> {
    let mains: Vec<&Member> = members.iter().filter(|m| !m.sidecar).collect();
    for active in [TaskState::Running, TaskState::Staging, TaskState::Queued] {
        if mains.iter().any(|m| m.state == active) {
            return Some(active);
        }
    }
    let first = mains.first()?;
    Some(
        mains
            .iter()
            .find(|m| m.state != TaskState::Finished)
            .unwrap_or(first)
            .state,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shared_paths() {
        assert_eq!(check_shared_path("/shared").unwrap(), "/shared");
        assert_eq!(check_shared_path("//data//x/").unwrap(), "/data/x");
        assert_eq!(check_shared_path("/procfs").unwrap(), "/procfs");
        for bad in [
            "shared", "", "/", "//", "/a/../b", "/a/./b", "/proc", "/proc/x", "/dev", "/sys/x",
            "/sandbox", "/tmp/", "/tmp/a", "/a\nb",
        ] {
            let e = check_shared_path(bad).unwrap_err();
            assert_eq!(e.field, "shared_path", "{bad:?}");
        }
        assert!(check_shared_path(&format!("/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn shared_paths_never_hide_system_dirs() {
        for bad in [
            "/etc", "/usr/", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/var",
            "/var/lib", "/root", "/boot", "//usr//", "/opt", "/home", "/srv", "/run",
        ] {
            let e = check_shared_path(bad).unwrap_err();
            assert_eq!(e.field, "shared_path", "{bad:?}");
            assert!(e.reason.contains("system directory"), "{bad:?}: {e}");
        }
        let e = check_shared_path("/var").unwrap_err();
        assert!(
            e.reason.contains("holds the system directory /var/lib"),
            "{e}"
        );
        // Review: below them a sidecar plants what the main member runs.
        for bad in [
            "/usr/local/bin",
            "/usr/bin",
            "/lib/x86_64-linux-gnu",
            "/etc/ssl/certs",
            "/etc/profile.d",
            "/etc/app",
            "/opt/conda",
            "/root/.ssh",
            "/bin/x",
            "/boot/efi",
        ] {
            let e = check_shared_path(bad).unwrap_err();
            assert!(
                e.reason.contains("is below the system directory"),
                "{bad:?}: {e}"
            );
        }
        // Below the data roots, beside them, or a longer name: the member's
        // choice.
        for ok in [
            "/var/lib/app",
            "/var/data",
            "/var/cache/x",
            "/srv/data",
            "/home/app",
            "/run/app",
            "/etcd",
            "/library",
            "/data",
            "/optional",
            "/usrdata",
        ] {
            assert!(check_shared_path(ok).is_ok(), "{ok}");
        }
    }

    fn spec(sidecar: bool) -> TaskSpec {
        let mut s: TaskSpec =
            serde_json::from_str(r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64}}"#).unwrap();
        s.sidecar = sidecar;
        s
    }

    #[test]
    fn members() {
        let e = check_members(GroupNetwork::Host, &[spec(true), spec(true)]).unwrap_err();
        assert_eq!(e.field, "tasks");
        check_members(GroupNetwork::Host, &[spec(true), spec(false)]).unwrap();
        let mut none = spec(false);
        none.network = Network::None;
        check_members(GroupNetwork::Host, &[none.clone()]).unwrap();
        let e = check_members(GroupNetwork::Group, &[spec(false), none]).unwrap_err();
        assert_eq!(e.field, "tasks[1].network");
        let mut api = spec(false);
        api.api_access = serde_json::from_str(r#"{"scope":"own-group"}"#).unwrap();
        let e = check_members(GroupNetwork::Group, &[api]).unwrap_err();
        assert_eq!(e.field, "tasks[0].api_access");
        // Probes and host ports belong to the host's network.
        let mut ported = spec(false);
        ported.ports = vec![0];
        let e = check_members(GroupNetwork::Group, &[ported.clone()]).unwrap_err();
        assert_eq!(e.field, "tasks[0].ports");
        check_members(GroupNetwork::Host, &[ported]).unwrap();
        let mut probed = spec(false);
        probed.health_checks = serde_json::from_str(r#"[{"protocol":"TCP","port":8080}]"#).unwrap();
        let e = check_members(GroupNetwork::Group, &[probed.clone()]).unwrap_err();
        assert_eq!(e.field, "tasks[0].health_checks");
        check_members(GroupNetwork::Host, &[probed]).unwrap();
        let mut command = spec(false);
        command.health_checks =
            serde_json::from_str(r#"[{"protocol":"COMMAND","command":"true"}]"#).unwrap();
        check_members(GroupNetwork::Group, &[command]).unwrap();
    }

    fn m(id: &str, sidecar: bool, state: TaskState) -> Member<'_> {
        Member { id, sidecar, state }
    }

    #[test]
    fn sidecars_stop_when_the_last_main_ends() {
        use TaskState::*;
        let running = [m("a", false, Running), m("s", true, Running)];
        assert!(sidecars_to_stop(&running).is_empty());
        assert_eq!(group_state(&running), Some(Running));
        let ended = [
            m("a", false, Finished),
            m("b", false, Failed),
            m("s", true, Running),
            m("t", true, Killed),
        ];
        assert_eq!(sidecars_to_stop(&ended), vec!["s"]);
        assert_eq!(group_state(&ended), Some(Failed));
        let done = [m("a", false, Finished), m("s", true, Killed)];
        assert_eq!(group_state(&done), Some(Finished));
        // No main member: nothing decided.
        assert!(sidecars_to_stop(&[m("s", true, Running)]).is_empty());
        assert_eq!(group_state(&[m("s", true, Running)]), None);
    }

    fn state() -> impl Strategy<Value = TaskState> {
        proptest::sample::select(TaskState::ALL.to_vec())
    }

    proptest! {
        /// Sidecars never decide the group's state, and are stopped only
        /// once no main member is left unfinished.
        #[test]
        fn sidecars_never_decide(
            members in proptest::collection::vec((any::<bool>(), state()), 0..8),
            other in proptest::collection::vec(state(), 0..8),
        ) {
            let ids: Vec<String> = (0..members.len()).map(|i| format!("m{i}")).collect();
            let list: Vec<Member> = members.iter().zip(&ids)
                .map(|(&(sidecar, state), id)| Member { id, sidecar, state }).collect();
            // The same group with the sidecars in other states.
            let changed: Vec<Member> = list.iter().enumerate().map(|(i, m)| Member {
                state: if m.sidecar { other.get(i).copied().unwrap_or(m.state) } else { m.state },
                ..*m
            }).collect();
            prop_assert_eq!(group_state(&list), group_state(&changed));
            let stop = sidecars_to_stop(&list);
            let mains_ended = list.iter().any(|m| !m.sidecar)
                && list.iter().filter(|m| !m.sidecar).all(|m| m.state.is_final());
            for id in &stop {
                let m = list.iter().find(|m| m.id == *id).unwrap();
                prop_assert!(m.sidecar && !m.state.is_final());
            }
            prop_assert_eq!(stop.is_empty(), !mains_ended
                || list.iter().all(|m| !m.sidecar || m.state.is_final()));
            if let Some(s) = group_state(&list) {
                prop_assert_eq!(s.is_final(), mains_ended);
            }
        }

        /// A path that passes is absolute, has no dot component, is not
        /// reserved, and is a fixed point of the check.
        #[test]
        fn accepted_paths_are_normal(path in "(/(\\.\\.|\\.|proc|tmp|sandbox|var|lib|etc|usr|srv|a|b c|x\\.y)){0,5}/?") {
            if let Ok(p) = check_shared_path(&path) {
                prop_assert!(p.starts_with('/') && p.len() > 1 && !p.ends_with('/'));
                prop_assert!(p.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != ".."));
                for r in RESERVED {
                    let below = format!("{}/", r);
                    prop_assert!(p != r && !p.starts_with(&below));
                }
                let above = format!("{}/", p);
                for d in SYSTEM {
                    let below = format!("{}/", d);
                    prop_assert!(p != d && !d.starts_with(&above) && !p.starts_with(&below));
                }
                for d in DATA_ROOTS {
                    prop_assert!(p != d && !d.starts_with(&above));
                }
                prop_assert_eq!(check_shared_path(&p).unwrap(), p.clone());
            }
        }
    }
}
