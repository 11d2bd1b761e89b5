//! Who may do what: the credential model of the agent (and of the fleet
//! scheduler, which reuses it). Pure: no HTTP types, no I/O, no clock.
//!
//! Two kinds of caller exist. An **admin** (a root or listed uid/gid on the
//! Unix socket, or the holder of the admin bearer token on TCP) may do
//! everything. A **task** holding a scoped token (its spec asked for
//! `"api_access": {"scope": "own-group"}`) may only submit, list, read and
//! kill tasks whose id starts with its group prefix, in its own role, within
//! that role's reservation.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// Who is calling, once identified.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A local process on the Unix socket whose peer credentials make it an
    /// admin.
    Peer { uid: u32, gid: u32 },
    /// The holder of the agent's admin token.
    AdminToken,
    /// A task's scoped token.
    Task(TaskScope),
}

/// What a task's scoped token reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskScope {
    /// The task the token was issued to.
    pub task_id: String,
    /// Task ids it may touch start with this (see [`group_prefix`]).
    pub prefix: String,
    /// The only role it may submit to or act on.
    pub role: String,
}

impl TaskScope {
    pub fn for_task(task_id: &str, role: &str) -> Self {
        TaskScope {
            task_id: task_id.to_owned(),
            prefix: group_prefix(task_id),
            role: role.to_owned(),
        }
    }

    /// May this scope see or act on a task with this id and role?
    pub fn covers(&self, id: &str, role: &str) -> bool {
        id.starts_with(&self.prefix) && role == self.role
    }
}

/// How the audit log names the caller.
impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Peer { uid, .. } => write!(f, "uid={uid} via socket"),
            Caller::AdminToken => write!(f, "token=admin"),
            Caller::Task(s) => write!(f, "token=task:{}", s.task_id),
        }
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        !matches!(self, Caller::Task(_))
    }
}

/// The group prefix of a task id: everything up to and including its last
/// `.` (`job1.sched` → `job1.`); an id without a dot is a group of its own
/// (`job1` → `job1.`). Group members are `<group>.<n>` by default, so a
/// member's scope is its group.
pub fn group_prefix(task_id: &str) -> String {
    match task_id.rfind('.') {
        Some(i) => task_id[..=i].to_owned(),
        None => format!("{task_id}."),
    }
}

/// CPU and memory, to compare a submission with a reservation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size {
    pub cpus: f64,
    pub mem_mb: f64,
}

impl Size {
    pub fn fits_in(&self, other: &Size) -> bool {
        self.cpus <= other.cpus + 1e-9 && self.mem_mb <= other.mem_mb + 1e-9
    }
}

/// What a caller wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// `/v1/health`, the OpenAPI document.
    Health,
    /// Node state, reservations, attributes, metrics.
    ReadNode,
    /// The task list (a scoped caller sees only its scope: [`visible`]).
    ListTasks,
    /// One task's status or logs.
    ReadTask {
        id: &'a str,
        role: &'a str,
    },
    KillTask {
        id: &'a str,
        role: &'a str,
    },
    /// A task, or a group's members (`ids` all, `demand` summed).
    /// `reserved` is the role's reservation, if it has one.
    Submit {
        ids: &'a [&'a str],
        role: &'a str,
        demand: Size,
        reserved: Option<Size>,
    },
    ChangeReservation {
        role: &'a str,
    },
    ChangeAttribute {
        name: &'a str,
    },
    /// A command run inside a running task (`gleaner exec`).
    Exec {
        id: &'a str,
    },
}

/// Why a caller may not do something (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The one authorisation rule.
pub fn authorize(caller: &Caller, action: &Action) -> Result<(), Denied> {
    let scope = match caller {
        Caller::Peer { .. } | Caller::AdminToken => return Ok(()),
        Caller::Task(scope) => scope,
    };
    let deny = |what: String| {
        Err(Denied(format!(
            "token of task {} (scope: ids {}*, role {}): {what}",
            scope.task_id, scope.prefix, scope.role
        )))
    };
    match *action {
        Action::Health | Action::ListTasks => Ok(()),
        Action::ReadTask { id, role } | Action::KillTask { id, role } => {
            if scope.covers(id, role) {
                Ok(())
            } else {
                deny(format!("task {id:?} is outside the scope"))
            }
        }
        Action::Submit {
            ids,
            role,
            demand,
            reserved,
        } => {
            if role != scope.role {
                return deny(format!("role {role:?} is not the task's own role"));
            }
            if let Some(id) = ids.iter().find(|id| !id.starts_with(&scope.prefix)) {
                return deny(format!("id {id:?} does not start with {:?}", scope.prefix));
            }
            match reserved {
                Some(r) if demand.fits_in(&r) => Ok(()),
                Some(r) => deny(format!(
                    "asks for {} cpus, {} MB: more than role {role:?} reserves ({} cpus, {} MB)",
                    demand.cpus, demand.mem_mb, r.cpus, r.mem_mb
                )),
                None => deny(format!("role {role:?} has no reservation")),
            }
        }
        Action::ReadNode => deny("node state is for admins".into()),
        Action::ChangeReservation { role } => {
            deny(format!("reservation of {role:?} is for admins"))
        }
        Action::ChangeAttribute { name } => deny(format!("attribute {name:?} is for admins")),
        // Even into its own task: exec is an operator's tool.
        Action::Exec { id } => deny(format!("exec into {id:?} is for admins")),
    }
}

/// Does `caller` see a task with this id and role in listings?
pub fn visible(caller: &Caller, id: &str, role: &str) -> bool {
    match caller {
        Caller::Task(scope) => scope.covers(id, role),
        _ => true,
    }
}

/// Is a Unix-socket peer an admin? uid 0 always is.
pub fn peer_is_admin(uid: u32, gids: &[u32], admin_uids: &[u32], admin_gids: &[u32]) -> bool {
    uid == 0 || admin_uids.contains(&uid) || gids.iter().any(|g| admin_gids.contains(g))
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    // Hashing first makes the lengths equal too.
    let (ha, hb) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    ha.as_slice().ct_eq(hb.as_slice()).into()
}

/// Bearer tokens and whom they belong to. Scoped tokens are kept by their
/// sha256, so a lookup reveals nothing through its timing.
#[derive(Debug, Default)]
pub struct Tokens {
    admin: Option<String>,
    scoped: HashMap<[u8; 32], TaskScope>,
}

impl Tokens {
    pub fn new(admin: Option<String>) -> Self {
        Tokens {
            admin,
            scoped: HashMap::new(),
        }
    }

    pub fn add_scoped(&mut self, token: &str, scope: TaskScope) {
        self.scoped.insert(digest(token), scope);
    }

    pub fn remove_scoped(&mut self, token: &str) {
        self.scoped.remove(&digest(token));
    }

    /// The caller a bearer token stands for. A scoped token identifies its
    /// task; whether that task still lives is the caller's to check.
    pub fn identify(&self, bearer: &str) -> Option<Caller> {
        if let Some(admin) = &self.admin {
            if tokens_equal(admin, bearer) {
                return Some(Caller::AdminToken);
            }
        }
        self.scoped.get(&digest(bearer)).cloned().map(Caller::Task)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh 256-bit secret as 64 hex digits.
pub fn new_token(random: [u8; 32]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short random suffix (8 hex digits) for generated ids.
pub fn new_token_short(random: [u8; 4]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, role: &str) -> Caller {
        Caller::Task(TaskScope::for_task(id, role))
    }

    const BIG: Size = Size {
        cpus: 4.0,
        mem_mb: 4096.0,
    };

    fn submit<'a>(ids: &'a [&'a str], role: &'a str, cpus: f64) -> Action<'a> {
        Action::Submit {
            ids,
            role,
            demand: Size { cpus, mem_mb: 64.0 },
            reserved: Some(BIG),
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(group_prefix("job1.sched"), "job1.");
        assert_eq!(group_prefix("a.b.c"), "a.b.");
        assert_eq!(group_prefix("job1"), "job1.");
    }

    #[test]
    fn admins_may_do_everything() {
        for c in [Caller::AdminToken, Caller::Peer { uid: 0, gid: 0 }] {
            assert!(authorize(&c, &Action::ChangeReservation { role: "batch" }).is_ok());
            assert!(authorize(&c, &submit(&["x"], "other", 100.0)).is_ok());
            assert!(authorize(&c, &Action::Exec { id: "x" }).is_ok());
            assert!(c.is_admin());
        }
    }

    #[test]
    fn exec_is_for_admins_even_into_a_tasks_own_group() {
        let t = task("job.a", "batch");
        assert!(authorize(
            &t,
            &Action::ReadTask {
                id: "job.a",
                role: "batch"
            }
        )
        .is_ok());
        let e = authorize(&t, &Action::Exec { id: "job.a" }).unwrap_err();
        assert!(e.0.contains("exec into \"job.a\" is for admins"), "{e}");
    }

    #[test]
    fn a_task_stays_in_its_group_and_role() {
        let c = task("job1.sched", "batch");
        assert!(authorize(&c, &submit(&["job1.w1", "job1.w2"], "batch", 1.0)).is_ok());
        assert!(authorize(&c, &submit(&["job2.w1"], "batch", 1.0)).is_err());
        assert!(authorize(&c, &submit(&["job1.w1", "job2.w1"], "batch", 1.0)).is_err());
        assert!(authorize(&c, &submit(&["job1.w1"], "prod", 1.0)).is_err());
        assert!(authorize(&c, &submit(&["job1.w1"], "batch", 5.0)).is_err());
        let no_reservation = Action::Submit {
            ids: &["job1.w"],
            role: "batch",
            demand: BIG,
            reserved: None,
        };
        assert!(authorize(&c, &no_reservation).is_err());
        assert!(authorize(
            &c,
            &Action::KillTask {
                id: "job1.w1",
                role: "batch"
            }
        )
        .is_ok());
        assert!(authorize(
            &c,
            &Action::KillTask {
                id: "job1.sched",
                role: "batch"
            }
        )
        .is_ok());
        assert!(authorize(
            &c,
            &Action::KillTask {
                id: "job2.w1",
                role: "batch"
            }
        )
        .is_err());
        assert!(authorize(
            &c,
            &Action::ReadTask {
                id: "job1.w1",
                role: "prod"
            }
        )
        .is_err());
        assert!(authorize(&c, &Action::ListTasks).is_ok());
        assert!(authorize(&c, &Action::Health).is_ok());
        assert!(authorize(&c, &Action::ReadNode).is_err());
        assert!(authorize(&c, &Action::ChangeReservation { role: "batch" }).is_err());
        assert!(authorize(&c, &Action::ChangeAttribute { name: "ssd" }).is_err());
        assert!(visible(&c, "job1.x", "batch"));
        assert!(!visible(&c, "job10.x", "batch"));
        assert!(!c.is_admin());
    }

    #[test]
    fn names_in_the_audit_log() {
        assert_eq!(
            Caller::Peer { uid: 0, gid: 0 }.to_string(),
            "uid=0 via socket"
        );
        assert_eq!(Caller::AdminToken.to_string(), "token=admin");
        assert_eq!(task("j.s", "batch").to_string(), "token=task:j.s");
    }

    #[test]
    fn peers() {
        assert!(peer_is_admin(0, &[], &[], &[]));
        assert!(!peer_is_admin(1000, &[1000], &[], &[]));
        assert!(peer_is_admin(1000, &[1000], &[1000], &[]));
        assert!(peer_is_admin(1000, &[1000, 27], &[], &[27]));
    }

    #[test]
    fn tokens_identify_their_holder() {
        let mut t = Tokens::new(Some("secret".into()));
        t.add_scoped("abc", TaskScope::for_task("j.s", "batch"));
        assert_eq!(t.identify("secret"), Some(Caller::AdminToken));
        assert_eq!(t.identify("secre"), None);
        assert_eq!(t.identify("abc"), Some(task("j.s", "batch")));
        t.remove_scoped("abc");
        assert_eq!(t.identify("abc"), None);
        assert!(Tokens::new(None).identify("").is_none());
        assert!(tokens_equal("a", "a") && !tokens_equal("a", "b") && !tokens_equal("a", "aa"));
        assert_eq!(new_token([0xab; 32]).len(), 64);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// A scoped token never reaches a task outside its prefix or
            /// role, whatever the ids.
            #[test]
            fn scope_is_a_prefix_and_a_role(own in "[a-z.]{1,12}", other in "[a-z.]{1,12}",
                                            role in "[ab]", other_role in "[ab]") {
                let c = Caller::Task(TaskScope::for_task(&own, &role));
                let allowed = authorize(&c, &Action::KillTask { id: &other, role: &other_role }).is_ok();
                prop_assert_eq!(allowed, other.starts_with(&group_prefix(&own)) && role == other_role);
                prop_assert!(other != own || role != other_role || allowed);
            }
        }
    }
}
