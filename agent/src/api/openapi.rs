//! The OpenAPI document of the agent's API, generated from the handlers'
//! annotations and the wire types (`utoipa`): served at
//! `GET /v1/openapi.json` and kept as `docs/openapi.json` (a test fails
//! when the two differ; `GLEANER_WRITE_OPENAPI=1` rewrites the file).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gleaner-agent",
        description = "The node agent's API. TCP: every request carries `Authorization: Bearer <token>`. The Unix socket `<data_dir>/run/api.sock` identifies its callers by peer credentials instead. Errors are `{\"error\": \"...\"}`.",
    ),
    paths(
        health, node_state, list_tasks, submit_task, get_task, kill_task, task_logs, exec::exec_task,
        submit_group, get_group, list_reservations, set_reservation, remove_reservation,
        list_attributes, set_attribute, remove_attribute, metrics, openapi_json,
    ),
    components(schemas(ErrorBody, GroupReply, crate::exec::ExecRequest)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The document, pretty-printed JSON with a final newline.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = crate::runtime::VERSION.to_owned();
    let mut text = doc
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the document the code generates.
    #[test]
    fn the_kept_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let now = super::document();
        if std::env::var_os("GLEANER_WRITE_OPENAPI").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &now).unwrap();
        }
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == now,
            "docs/openapi.json differs from the code's document: run \
             GLEANER_WRITE_OPENAPI=1 cargo test -p gleaner-agent --lib openapi"
        );
        let doc: serde_json::Value = serde_json::from_str(&now).unwrap();
        for p in [
            "/v1/tasks",
            "/v1/tasks/{id}",
            "/v1/reservations/{role}",
            "/v1/openapi.json",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing");
        }
        assert!(doc["components"]["schemas"]["TaskSpec"]["properties"]["api_access"].is_object());
    }
}
