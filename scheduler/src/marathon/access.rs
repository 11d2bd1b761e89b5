//! Who calls: the admin token, or an app instance's scoped token
//! ([`gleaner_core::app_token`]). The token middleware identifies the
//! caller once per request and leaves an [`Access`] in its extensions;
//! the Marathon handlers check it against what they touch and filter
//! their listings with it. A refusal is `403 {"message": reason}`.

use axum::http::StatusCode;
use gleaner_core::app_token::{self, AppAction, AppScope};

use super::api::MError;
use super::cache::Data;
use super::model::LABEL_API_ACCESS;

#[derive(Debug, Clone)]
pub enum Access {
    Admin,
    App(AppScope),
}

impl Access {
    pub fn check(&self, action: AppAction) -> Result<(), MError> {
        match self {
            Access::Admin => Ok(()),
            Access::App(scope) => app_token::authorize(scope, &action)
                .map_err(|d| MError::new(StatusCode::FORBIDDEN, d.0)),
        }
    }

    /// Does this caller see the app in listings?
    pub fn sees(&self, app: &str) -> bool {
        match self {
            Access::Admin => true,
            Access::App(scope) => scope.covers(app),
        }
    }
}

/// The scope of a verified app token, if its app still exists as the
/// token was minted for (same create revision) and still asks for access.
pub fn scope_of(data: &Data, app: &str, created: i64) -> Option<AppScope> {
    let (a, _) = data.apps.get(app)?;
    if data.created.get(app) != Some(&created) {
        return None;
    }
    if a.labels.get(LABEL_API_ACCESS).map(String::as_str) != Some(app_token::OWN_GROUP) {
        return None;
    }
    Some(AppScope::for_app(app, &a.role(), &a.queue()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gleaner_core::fleet::Keys;

    #[test]
    fn a_token_lives_with_its_app_and_its_label() {
        let k = Keys::new("/g");
        let mut d = Data::default();
        let with = br#"{"id": "/t/s", "cmd": "x", "labels": {"GLEANER_API_ACCESS": "own-group"}}"#;
        d.put(&k, "/g/apps/t/s", with, 5, 5);
        let s = scope_of(&d, "/t/s", 5).unwrap();
        assert_eq!((s.prefix.as_str(), s.role.as_str()), ("/t/", "batch"));
        // Recreated: another create revision.
        assert!(scope_of(&d, "/t/s", 4).is_none());
        // The label removed: no access.
        d.put(&k, "/g/apps/t/s", br#"{"id": "/t/s", "cmd": "x"}"#, 6, 5);
        assert!(scope_of(&d, "/t/s", 5).is_none());
        d.delete(&k, "/g/apps/t/s");
        assert!(scope_of(&d, "/t/s", 5).is_none());
        let a = Access::App(AppScope::for_app("/t/s", "batch", "marathon"));
        assert!(a.sees("/t/w") && !a.sees("/u/w") && Access::Admin.sees("/u/w"));
        let e = a.check(AppAction::Change { app: "/u/w" }).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
    }
}
