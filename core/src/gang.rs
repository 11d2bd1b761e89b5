//! A fleet gang placed on a node is a task group there (a pod, as
//! `POST /v1/groups` makes on one agent): the pure rules that join the two.
//!
//! * At submission ([`check_member`], [`check_gang`]): a gang's pod
//!   settings follow the group rules (`crate::group`); its members share a
//!   role (one group cgroup per node, under the role's) and are not
//!   restarted one by one (the fleet retries them); a sidecar is a gang
//!   member, and a gang needs a member that is not a sidecar.
//! * At placement ([`groups_by_node`]): when a unit (one transaction) holds
//!   the whole gang, its members that land on the same node are one group,
//!   named after the first of them ([`group_id`]). Members placed again
//!   while others of their gang still hold their places (a retry, a drain,
//!   a lost node) are plain tasks: a group is admitted whole, nothing joins
//!   it afterwards. A whole gang requeued together (every member ended in
//!   the same pass) is placed whole again: new groups. A gang with a
//!   sidecar is placed on one node (`crate::placement`), so its sidecars
//!   always share a group with main members.

use std::collections::BTreeMap;

use crate::fleet::{Gang, PlacedGroup};
use crate::group::{self, GroupError, GroupNetwork};
use crate::spec::{RestartPolicy, TaskSpec};

/// The group name of the members placed together on a node: the first
/// member's task id (unique for ever: job ids are, and each attempt is
/// placed once) plus `.pod`, never a task id (`<job>.<digits>`), at most
/// 48 + 1 + 10 + 4 = 63 characters (the agent's name rule allows 64).
pub fn group_id(first_task: &str) -> String {
    format!("{first_task}.pod")
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> GroupError {
    GroupError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A gang as stored: the shared path normalised, `network: host` left out
/// (the default), so members that mean the same compare equal.
pub fn normalized(mut gang: Gang) -> Result<Gang, GroupError> {
    if let Some(path) = &gang.shared_path {
        gang.shared_path =
            Some(group::check_shared_path(path).map_err(|e| bad("gang.shared_path", e.reason))?);
    }
    gang.network = gang.network.filter(|n| *n != GroupNetwork::Host);
    Ok(gang)
}

/// Whether a gang asks to be a pod on each node: pod settings given
/// (`shared_path`, a `group` network) or a sidecar among its members.
/// A plain gang (all-or-nothing placement only, as stored before pods
/// existed) stays plain: no group, no `/shared` over its images, mixed
/// roles and restart policies kept working.
pub fn is_pod(gang: &Gang, any_sidecar: bool) -> bool {
    any_sidecar
        || gang.shared_path.is_some()
        || gang.network.is_some_and(|n| n != GroupNetwork::Host)
}

/// Checks one job's spec against its gang (`None`: not in a gang). Field
/// names are relative to the job (`spec.…`, `gang.…`). The pod rules
/// apply only to a gang that asks to be a pod ([`is_pod`]).
pub fn check_member(gang: Option<&Gang>, spec: &TaskSpec) -> Result<(), GroupError> {
    let Some(gang) = gang else {
        if spec.sidecar {
            return Err(bad(
                "spec.sidecar",
                "only a member of a gang can be a sidecar (it serves the gang's members on its node)",
            ));
        }
        return Ok(());
    };
    if let Some(path) = &gang.shared_path {
        group::check_shared_path(path).map_err(|e| bad("gang.shared_path", e.reason))?;
    }
    if !is_pod(gang, spec.sidecar) {
        return Ok(());
    }
    if spec.restart.policy != RestartPolicy::Never {
        return Err(bad(
            "spec.restart",
            "members of a gang are not restarted one by one (the fleet retries them: max_retries)",
        ));
    }
    let network = gang.network.unwrap_or_default();
    group::check_network_members(network, std::iter::once(spec)).map_err(|e| {
        let field = e
            .field
            .strip_prefix("tasks[0].")
            .map(|f| format!("spec.{f}"))
            .unwrap_or(e.field);
        bad(field, e.reason)
    })
}

/// Checks the members of one gang given together: the same settings and
/// role, and (once all `cardinality` are here) a member that is not a
/// sidecar. Returns the index of the offending member with the error.
pub fn check_gang(members: &[(&Gang, &TaskSpec)]) -> Result<(), (usize, GroupError)> {
    let Some(&(first, first_spec)) = members.first() else {
        return Ok(());
    };
    let pod = is_pod(first, members.iter().any(|(_, s)| s.sidecar));
    for (i, (g, spec)) in members.iter().enumerate().skip(1) {
        if pod && spec.restart.policy != RestartPolicy::Never {
            return Err((
                i,
                bad(
                    "spec.restart",
                    "members of a gang with a sidecar are not restarted one by one (the fleet retries them: max_retries)",
                ),
            ));
        }
        if *g != first {
            return Err((
                i,
                bad(
                    "gang",
                    format!(
                        "every member of gang {} carries the same settings (cardinality, shared_path, network)",
                        first.id
                    ),
                ),
            ));
        }
        if pod && spec.role != first_spec.role {
            return Err((
                i,
                bad(
                    "spec.role",
                    format!(
                        "every member of gang {} has the same role ({:?}): its members on a node are one group",
                        first.id, first_spec.role
                    ),
                ),
            ));
        }
    }
    if members.len() >= first.cardinality as usize && members.iter().all(|(_, s)| s.sidecar) {
        return Err((
            0,
            bad(
                "spec.sidecar",
                format!(
                    "gang {} needs at least one member that is not a sidecar",
                    first.id
                ),
            ),
        ));
    }
    Ok(())
}

/// One placed member of a unit, in the unit's order.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub task: &'a str,
    pub node: &'a str,
    pub gang: Option<&'a Gang>,
    pub sidecar: bool,
}

/// The group of each placed gang member (by task id): when the unit holds
/// the whole gang (all `cardinality` members), its members on one node, in
/// unit order, the first naming the group. Members without a gang, or of a
/// gang placed in part (members moved or retried), get none.
pub fn groups_by_node(unit: &[Placed<'_>]) -> BTreeMap<String, PlacedGroup> {
    let mut size: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sidecar: BTreeMap<&str, bool> = BTreeMap::new();
    for p in unit {
        if let Some(g) = p.gang {
            *size.entry(g.id.as_str()).or_default() += 1;
            *sidecar.entry(g.id.as_str()).or_default() |= p.sidecar;
        }
    }
    let pod = |g: &Gang| is_pod(g, sidecar.get(g.id.as_str()).copied().unwrap_or(false));
    // Only a whole gang: members placed again while others still hold
    // their places (a drain, a retry) are plain tasks, since a group is
    // admitted whole and nothing joins it later.
    let whole = |g: &Gang| size.get(g.id.as_str()).copied().unwrap_or(0) >= g.cardinality as usize;
    let mut per_node: BTreeMap<&str, Vec<&Placed>> = BTreeMap::new();
    for p in unit
        .iter()
        .filter(|p| p.gang.is_some_and(|g| whole(g) && pod(g)))
    {
        per_node.entry(p.node).or_default().push(p);
    }
    let mut out = BTreeMap::new();
    for members in per_node.values() {
        let gang = members[0].gang.expect("filtered");
        let group = PlacedGroup {
            id: group_id(members[0].task),
            gang: gang.id.clone(),
            members: members.iter().map(|p| p.task.to_owned()).collect(),
            shared_path: gang.shared_path.clone(),
            network: gang.network.filter(|n| *n != GroupNetwork::Host),
        };
        for p in members {
            out.insert(p.task.to_owned(), group.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{parse_task_id, task_id, MAX_JOB_ID_LEN};

    fn gang(network: Option<GroupNetwork>, path: Option<&str>) -> Gang {
        Gang {
            id: "g".into(),
            cardinality: 2,
            shared_path: path.map(str::to_owned),
            network,
        }
    }

    fn spec(extra: serde_json::Value) -> TaskSpec {
        let mut v = serde_json::json!({"cmd": "x", "resources": {"cpus": 1, "mem_mb": 64}});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn group_ids_are_names_and_never_task_ids() {
        let first = task_id(&"a".repeat(MAX_JOB_ID_LEN), u32::MAX);
        let id = group_id(&first);
        crate::spec::check_name("id", &id).unwrap();
        assert_eq!(parse_task_id(&id), None);
        assert_eq!(group_id("j1.3"), "j1.3.pod");
    }

    #[test]
    fn members_follow_the_group_rules() {
        let none = serde_json::json!({});
        check_member(None, &spec(none.clone())).unwrap();
        let e = check_member(None, &spec(serde_json::json!({"sidecar": true}))).unwrap_err();
        assert_eq!(e.field, "spec.sidecar");
        let g = gang(Some(GroupNetwork::Group), None);
        check_member(Some(&g), &spec(serde_json::json!({"sidecar": true}))).unwrap();
        let e = check_member(Some(&g), &spec(serde_json::json!({"network": "none"}))).unwrap_err();
        assert_eq!(e.field, "spec.network", "{e}");
        let e = check_member(Some(&g), &spec(serde_json::json!({"ports": [0]}))).unwrap_err();
        assert_eq!(e.field, "spec.ports", "{e}");
        // The host network: each member's own settings stand.
        check_member(
            Some(&gang(None, None)),
            &spec(serde_json::json!({"ports": [0]})),
        )
        .unwrap();
        for path in ["/etc", "relative", "/tmp/x", "/"] {
            let e = check_member(Some(&gang(None, Some(path))), &spec(none.clone())).unwrap_err();
            assert_eq!(e.field, "gang.shared_path", "{path}");
        }
        check_member(Some(&gang(None, Some("/data"))), &spec(none.clone())).unwrap();
        let n = normalized(gang(Some(GroupNetwork::Host), Some("//data/x/"))).unwrap();
        assert_eq!(
            (n.shared_path.as_deref(), n.network),
            (Some("/data/x"), None)
        );
        assert!(normalized(gang(None, Some("/usr"))).is_err());
        let e = check_member(
            Some(&gang(None, Some("/data"))),
            &spec(serde_json::json!({"restart": {"policy": "on-failure"}})),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.restart");
    }

    #[test]
    fn a_gang_agrees_and_has_a_main_member() {
        let (g, h) = (gang(None, None), gang(Some(GroupNetwork::Group), None));
        let main = spec(serde_json::json!({}));
        let side = spec(serde_json::json!({"sidecar": true}));
        check_gang(&[(&g, &main), (&g, &side)]).unwrap();
        let (i, e) = check_gang(&[(&g, &main), (&h, &side)]).unwrap_err();
        assert_eq!((i, e.field.as_str()), (1, "gang"));
        let other = spec(serde_json::json!({"role": "web"}));
        let (i, e) = check_gang(&[(&h, &main), (&h, &other)]).unwrap_err();
        assert_eq!((i, e.field.as_str()), (1, "spec.role"));
        let (_, e) = check_gang(&[(&g, &side), (&g, &side)]).unwrap_err();
        assert_eq!(e.field, "spec.sidecar");
        // Not all members here yet: the rest may be main members.
        check_gang(&[(&g, &side)]).unwrap();
    }

    /// Review: every gang became a pod, those stored before pods existed
    /// too (mixed roles waited for ever, restart policies were refused,
    /// `/shared` hid the images' own). A plain gang keeps its freedom.
    #[test]
    fn a_plain_gang_is_not_held_to_the_pod_rules() {
        let g = gang(None, None);
        let main = spec(serde_json::json!({"restart": {"policy": "on-failure"}}));
        let web = spec(serde_json::json!({"role": "web"}));
        check_member(Some(&g), &main).unwrap();
        check_gang(&[(&g, &main), (&g, &web)]).unwrap();
        let pod = gang(None, Some("/data"));
        assert!(check_member(Some(&pod), &main).is_err());
        assert!(check_gang(&[(&pod, &web), (&pod, &spec(serde_json::json!({})))]).is_err());
        let side = spec(serde_json::json!({"sidecar": true}));
        assert!(
            check_gang(&[(&g, &side), (&g, &main)]).is_err(),
            "a sidecar makes it a pod"
        );
    }

    #[test]
    fn members_on_one_node_are_one_group() {
        let g = gang(Some(GroupNetwork::Group), Some("/data"));
        let host = gang(Some(GroupNetwork::Host), None);
        let p = |task, node, gang| Placed {
            task,
            node,
            gang,
            sidecar: false,
        };
        let unit = [
            p("b.1", "n2", Some(&g)),
            p("a.1", "n1", Some(&g)),
            p("c.2", "n2", Some(&g)),
        ];
        let groups = groups_by_node(&unit);
        assert_eq!(groups.len(), 3);
        let on2 = &groups["b.1"];
        assert_eq!(on2, &groups["c.2"]);
        assert_eq!(on2.id, "b.1.pod");
        assert_eq!(on2.members, ["b.1", "c.2"]);
        assert_eq!(on2.shared_path.as_deref(), Some("/data"));
        assert_eq!(on2.network, Some(GroupNetwork::Group));
        let on1 = &groups["a.1"];
        assert_eq!((on1.id.as_str(), on1.members.len()), ("a.1.pod", 1));
        // A plain job: no group. `host` is written as absent.
        assert!(groups_by_node(&[p("x.1", "n1", None)]).is_empty());
        // A plain gang (no pod settings, no sidecar) stays plain tasks.
        assert!(
            groups_by_node(&[p("y.1", "n1", Some(&host)), p("z.1", "n1", Some(&host))]).is_empty()
        );
        // With a sidecar it is a pod; `host` is written as absent.
        let side = |task, node| Placed {
            task,
            node,
            gang: Some(&host),
            sidecar: true,
        };
        let h = groups_by_node(&[p("y.1", "n1", Some(&host)), side("z.1", "n1")]);
        assert_eq!(h["y.1"].network, None);
        assert_eq!(h["z.1"].members, ["y.1", "z.1"]);
        // Part of a gang placed again (the others still run): plain tasks.
        assert!(groups_by_node(&[p("y.2", "n1", Some(&g))]).is_empty());
    }
}
