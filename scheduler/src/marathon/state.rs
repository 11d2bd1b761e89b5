//! What the Marathon layer keeps in etcd besides `apps/<app-id>`:
//! deployments (`deployments/<id>`, resumed by any new leader) and per-app
//! launch bookkeeping (`appstate/<app-id>`: the backoff's failure count and
//! Marathon's `lastTaskFailure`). App instances themselves are fleet jobs
//! (`jobs/<id>`, queue `marathon`), placed by the same pass as any job.

use chrono::{DateTime, Utc};
use gleaner_core::fleet::Keys;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::App;

pub fn deployments_prefix(keys: &Keys) -> String {
    format!("{}/deployments/", keys.prefix)
}
pub fn deployment_key(keys: &Keys, id: &str) -> String {
    format!("{}/deployments/{id}", keys.prefix)
}
pub fn appstate_prefix(keys: &Keys) -> String {
    format!("{}/appstate/", keys.prefix)
}
pub fn appstate_key(keys: &Keys, app: &str) -> String {
    format!("{}/appstate/{}", keys.prefix, app.trim_start_matches('/'))
}
/// The app id of an `apps/...` key.
pub fn app_id_of_key(keys: &Keys, key: &str) -> Option<String> {
    key.strip_prefix(&keys.apps_prefix())
        .filter(|r| !r.is_empty())
        .map(|r| format!("/{r}"))
}

/// Marathon's deployment actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    StartApplication,
    ScaleApplication,
    RestartApplication,
    StopApplication,
}

/// `deployments/<id>`: one app's change in progress. The leader deletes it
/// when the app reached its target; `previous` is what a rollback restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub app: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<App>>,
}

impl Deployment {
    /// Marathon's JSON for `GET /v2/deployments`.
    pub fn render(&self) -> Value {
        let action = json!({"action": self.action, "app": self.app});
        json!({
            "id": self.id,
            "version": self.version,
            "affectedApps": [self.app],
            "affectedPods": [],
            "steps": [{"actions": [action]}],
            "currentActions": [{"action": self.action, "app": self.app, "readinessCheckResults": []}],
            "currentStep": 1,
            "totalSteps": 1,
        })
    }
}

/// `appstate/<app-id>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Consecutive failures of instances of `version` (the backoff's n).
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Marathon's `lastTaskFailure`, as rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task_failure: Option<Value>,
}

/// A random UUID (v4 layout) for deployment ids.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A job id for a new instance of `app`: the app path with `/` → `_` and
/// `.` → `-` (Marathon's task id look), cut to fit, plus 12 random hex
/// digits. Within `[A-Za-z0-9_-]{1,48}`.
pub fn instance_job_id(app: &str) -> String {
    let mut base: String = app
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '_',
            '.' => '-',
            c if c.is_ascii_alphanumeric() || c == '-' => c,
            _ => '_',
        })
        .collect();
    base.truncate(34);
    let r = uuid().replace('-', "");
    format!("{base}_{}", &r[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_the_fleet_rules() {
        let a = instance_job_id("/grp/web.v2");
        assert!(a.starts_with("grp_web-v2_"), "{a}");
        gleaner_core::fleet::check_job_id(&a).unwrap();
        let long = format!("/{}", "a".repeat(190));
        gleaner_core::fleet::check_job_id(&instance_job_id(&long)).unwrap();
        assert_ne!(instance_job_id("/x"), instance_job_id("/x"));
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let k = Keys::new("/p");
        assert_eq!(
            app_id_of_key(&k, "/p/apps/g/web").as_deref(),
            Some("/g/web")
        );
        assert_eq!(appstate_key(&k, "/g/web"), "/p/appstate/g/web");
    }
}
