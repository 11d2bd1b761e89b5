//! Marathon's constraint operators, evaluated on one node. Pure: the
//! runtime passes the node's attributes and the tasks running on it.
//!
//! * `IS` / `EQ` value: the attribute equals the value.
//! * `LIKE` regex / `UNLIKE` regex: the attribute fully matches (does not
//!   match) the regex. A missing attribute fails every operator but UNLIKE.
//! * `CLUSTER` [value]: the attribute exists (and equals value if given).
//! * `GROUP_BY` [n]: the attribute exists (one node is one group).
//! * `MAX_PER` n: at most n running tasks of the same kind on this node
//!   (the node has one value of the attribute); `UNIQUE` is `MAX_PER 1`.
//!   Tasks are of the same kind when they share role and command line.

use std::collections::BTreeMap;

use regex::Regex;

#[derive(Debug, Clone)]
pub enum Op {
    Is(String),
    Like(Regex),
    Unlike(Regex),
    Cluster(Option<String>),
    GroupBy,
    MaxPer(usize),
}

#[derive(Debug, Clone)]
pub struct Constraint {
    pub attribute: String,
    pub op: Op,
    /// As written, for messages.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraints[{index}]: {reason}")]
pub struct ConstraintError {
    pub index: usize,
    pub reason: String,
}

/// Most constraints one spec may carry.
pub const MAX_CONSTRAINTS: usize = 32;
/// Longest regex of a `LIKE` / `UNLIKE`, in bytes.
pub const MAX_REGEX_LEN: usize = 256;
/// Compiled size limit of one regex: the fleet's leader compiles every
/// pending job's regexes on each pass, so one costs well under a
/// millisecond (regex's default, 10 MiB, let `\w{60}` take 0.1-1 s).
const REGEX_SIZE_LIMIT: usize = 64 << 10;

/// Parses `[[attr, OP, value?], ...]`, compiling regexes once.
pub fn parse(raw: &[Vec<String>]) -> Result<Vec<Constraint>, ConstraintError> {
    if raw.len() > MAX_CONSTRAINTS {
        return Err(ConstraintError {
            index: MAX_CONSTRAINTS,
            reason: format!("at most {MAX_CONSTRAINTS} constraints"),
        });
    }
    raw.iter()
        .enumerate()
        .map(|(index, c)| parse_one(c).map_err(|reason| ConstraintError { index, reason }))
        .collect()
}

fn parse_one(c: &[String]) -> Result<Constraint, String> {
    let (attribute, op, value) = match c {
        [a, o] => (a, o, None),
        [a, o, v] => (a, o, Some(v)),
        _ => {
            return Err(format!(
                "{c:?}: expected [attribute, OPERATOR] or [attribute, OPERATOR, value]"
            ))
        }
    };
    if attribute.is_empty() {
        return Err("attribute name is empty".into());
    }
    let need = |what: &str| value.cloned().ok_or_else(|| format!("{op} needs {what}"));
    let regex = |v: String| {
        if v.len() > MAX_REGEX_LEN {
            return Err(format!("{op}: regex longer than {MAX_REGEX_LEN} bytes"));
        }
        // Full match, as Marathon does.
        regex::RegexBuilder::new(&format!("^(?:{v})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("{op} {v:?}: invalid regex: {e}"))
    };
    let count = |v: String| {
        v.parse::<usize>()
            .map_err(|_| format!("{op} needs a whole number, got {v:?}"))
    };
    let op = match op.to_ascii_uppercase().as_str() {
        "IS" | "EQ" => Op::Is(need("a value")?),
        "LIKE" => Op::Like(regex(need("a regex")?)?),
        "UNLIKE" => Op::Unlike(regex(need("a regex")?)?),
        "CLUSTER" => Op::Cluster(value.cloned()),
        "GROUP_BY" => {
            if let Some(v) = value {
                count(v.clone())?;
            }
            Op::GroupBy
        }
        "MAX_PER" => Op::MaxPer(count(need("a number")?)?),
        "UNIQUE" => Op::MaxPer(1),
        other => {
            return Err(format!(
            "unknown operator {other:?} (IS, EQ, LIKE, UNLIKE, UNIQUE, CLUSTER, GROUP_BY, MAX_PER)"
        ))
        }
    };
    Ok(Constraint {
        attribute: attribute.clone(),
        op,
        text: c.join(" "),
    })
}

/// Checks every constraint; on failure, says which one and why.
/// `same_kind_running` counts the *other* running tasks of the same kind.
pub fn check(
    constraints: &[Constraint],
    attributes: &BTreeMap<String, String>,
    same_kind_running: usize,
) -> Result<(), String> {
    for c in constraints {
        let value = attributes.get(&c.attribute);
        let ok = match (&c.op, value) {
            (Op::Unlike(re), None) => {
                let _ = re;
                true
            }
            (_, None) => false,
            (Op::Is(want), Some(v)) => v == want,
            (Op::Like(re), Some(v)) => re.is_match(v),
            (Op::Unlike(re), Some(v)) => !re.is_match(v),
            (Op::Cluster(want), Some(v)) => want.as_ref().is_none_or(|w| w == v),
            (Op::GroupBy, Some(_)) => true,
            (Op::MaxPer(n), Some(_)) => same_kind_running < *n,
        };
        if !ok {
            let have = match value {
                Some(v) => format!("{} = {v:?}", c.attribute),
                None => format!("{} is not set", c.attribute),
            };
            return Err(format!("constraint {} does not hold ({have})", c.text));
        }
    }
    Ok(())
}

/// Whether the constraints depend on how many tasks run (MAX_PER, UNIQUE):
/// those are checked at admission, not re-checked against running tasks.
pub fn counts_tasks(constraints: &[Constraint]) -> bool {
    constraints.iter().any(|c| matches!(c.op, Op::MaxPer(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn c(parts: &[&str]) -> Vec<Constraint> {
        parse(&[parts.iter().map(|s| s.to_string()).collect()]).unwrap()
    }

    #[test]
    fn is_and_eq() {
        let a = attrs(&[("ssd", "true")]);
        assert!(check(&c(&["ssd", "IS", "true"]), &a, 0).is_ok());
        assert!(check(&c(&["ssd", "EQ", "true"]), &a, 0).is_ok());
        let e = check(&c(&["ssd", "IS", "false"]), &a, 0).unwrap_err();
        assert!(e.contains("ssd IS false") && e.contains("\"true\""), "{e}");
    }

    #[test]
    fn like_and_unlike_match_the_whole_value() {
        let a = attrs(&[("zone", "east-1")]);
        assert!(check(&c(&["zone", "LIKE", "east-.*"]), &a, 0).is_ok());
        assert!(
            check(&c(&["zone", "LIKE", "east"]), &a, 0).is_err(),
            "partial match must fail"
        );
        assert!(check(&c(&["zone", "UNLIKE", "west-.*"]), &a, 0).is_ok());
        assert!(check(&c(&["zone", "UNLIKE", "east-1"]), &a, 0).is_err());
    }

    #[test]
    fn a_missing_attribute_fails_all_but_unlike() {
        let none = attrs(&[]);
        for parts in [
            &["zone", "IS", "x"][..],
            &["zone", "LIKE", ".*"],
            &["zone", "CLUSTER"],
            &["zone", "GROUP_BY"],
            &["zone", "MAX_PER", "3"],
            &["zone", "UNIQUE"],
        ] {
            let e = check(&c(parts), &none, 0).unwrap_err();
            assert!(e.contains("not set"), "{parts:?}: {e}");
        }
        assert!(check(&c(&["zone", "UNLIKE", "east"]), &none, 0).is_ok());
    }

    #[test]
    fn cluster_group_by_max_per_unique_on_one_node() {
        let a = attrs(&[("rack", "r1")]);
        assert!(check(&c(&["rack", "CLUSTER"]), &a, 0).is_ok());
        assert!(check(&c(&["rack", "CLUSTER", "r1"]), &a, 0).is_ok());
        assert!(check(&c(&["rack", "CLUSTER", "r2"]), &a, 0).is_err());
        assert!(check(&c(&["rack", "GROUP_BY", "2"]), &a, 5).is_ok());
        assert!(check(&c(&["rack", "MAX_PER", "2"]), &a, 1).is_ok());
        assert!(check(&c(&["rack", "MAX_PER", "2"]), &a, 2).is_err());
        assert!(check(&c(&["rack", "UNIQUE"]), &a, 0).is_ok());
        assert!(check(&c(&["rack", "UNIQUE"]), &a, 1).is_err());
        assert!(counts_tasks(&c(&["rack", "UNIQUE"])));
        assert!(!counts_tasks(&c(&["rack", "LIKE", "r.*"])));
    }

    #[test]
    fn bad_constraints_are_named() {
        let raw = |v: &[&str]| vec![v.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        for (bad, needle) in [
            (&["a", "NEAR", "b"][..], "unknown operator"),
            (&["a", "LIKE", "(unclosed"], "invalid regex"),
            (&["a", "LIKE", r"\w{60}(\w{60}|\d{60})"], "invalid regex"),
            (&["a", "LIKE", &"a".repeat(300)], "longer than"),
            (&["a", "IS"], "needs a value"),
            (&["a", "MAX_PER", "many"], "whole number"),
            (&["a"], "expected"),
            (&["", "IS", "x"], "empty"),
        ] {
            let e = parse(&raw(bad)).unwrap_err().to_string();
            assert!(
                e.starts_with("constraints[0]") && e.contains(needle),
                "{bad:?}: {e}"
            );
        }
        let many = vec![vec!["a".to_string(), "UNIQUE".to_string()]; MAX_CONSTRAINTS + 1];
        assert!(parse(&many).unwrap_err().to_string().contains("at most"));
        assert!(parse(&many[1..]).is_ok());
        // What operators write compiles within the size limit.
        for ok in [
            r"east-.*",
            r"\w+",
            r"rack-[0-9]+",
            r"[a-z0-9-]{1,63}",
            "(a|b|c)",
        ] {
            parse(&raw(&["a", "LIKE", ok])).unwrap();
        }
        // Operators are case-insensitive, as in Marathon.
        assert!(parse(&raw(&["a", "like", "x"])).is_ok());
    }

    #[test]
    fn all_constraints_must_hold() {
        let a = attrs(&[("zone", "east-1"), ("ssd", "true")]);
        let both = parse(&[
            vec!["zone".into(), "LIKE".into(), "east-.*".into()],
            vec!["ssd".into(), "IS".into(), "true".into()],
        ])
        .unwrap();
        assert!(check(&both, &a, 0).is_ok());
        assert!(check(&both, &attrs(&[("zone", "east-1")]), 0).is_err());
    }
}
