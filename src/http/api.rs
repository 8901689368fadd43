//! The admin API (SPEC O3): `crate::admin`'s operations over HTTP, with the CLI's JSON.
//! With a token configured every `/v1` request needs `Authorization: Bearer <token>`.

use crate::admin::{self, AdminError};
use crate::store::{Removal, Store, StoreError};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub struct Api {
    pub store: Store,
    pub case_sensitive: bool,
    /// `--http-token-file`'s content.
    pub token: Option<String>,
    /// The registrar's reg-event service: removals are NOTIFYed (SPEC E2).
    pub events: Option<Arc<crate::regevent::RegEvents>>,
}

pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/v1/aors/{aor}/bindings",
            get(show_bindings).delete(remove_bindings),
        )
        .route("/v1/bindings", get(page))
        .route("/v1/pcontacts", get(pcontacts))
        .route(
            "/v1/users/{aor}",
            axum::routing::put(put_user).delete(remove_user),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&api), bearer))
        .with_state(api)
}

/// An error as JSON with the status it deserves; the message is the CLI's.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Failure {
        let status = match &e {
            AdminError::Aor { .. } | AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(StoreError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

async fn bearer(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut response = Failure(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed".into(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            return response;
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn show_bindings(
    State(api): State<Arc<Api>>,
    Path(aor): Path<String>,
) -> Result<Json<Vec<Value>>, Failure> {
    let aor = admin::parse_aor(&aor, api.case_sensitive)?;
    Ok(Json(admin::bindings(&api.store, &aor).await?))
}

#[derive(Deserialize)]
struct Which {
    ruid: Option<String>,
    contact: Option<String>,
}

async fn remove_bindings(
    State(api): State<Arc<Api>>,
    Path(aor): Path<String>,
    Query(which): Query<Which>,
) -> Result<Json<Value>, Failure> {
    let aor = admin::parse_aor(&aor, api.case_sensitive)?;
    let which = match (which.contact, which.ruid) {
        (Some(_), Some(_)) => {
            return Err(AdminError::Invalid("give ruid or contact, not both".into()).into());
        }
        (Some(c), None) => Removal::Contact(c),
        (None, Some(r)) => Removal::Ruid(r),
        (None, None) => Removal::All,
    };
    let removed = admin::remove_bindings(&api.store, &aor, &which, api.events.as_deref()).await?;
    Ok(Json(json!({ "removed": removed })))
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

async fn page(
    State(api): State<Arc<Api>>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, Failure> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l.parse().map_err(|_| {
            AdminError::Invalid(format!("limit must be between 1 and {}", admin::MAX_PAGE))
        })?,
    };
    Ok(Json(
        admin::page(&api.store, q.after.as_deref(), limit).await?,
    ))
}

#[derive(Deserialize)]
struct ImpuQuery {
    aor: Option<String>,
}

async fn pcontacts(
    State(api): State<Arc<Api>>,
    Query(q): Query<ImpuQuery>,
) -> Result<Json<Vec<Value>>, Failure> {
    let impu = q
        .aor
        .ok_or_else(|| AdminError::Invalid("the aor query parameter is needed".into()))?;
    Ok(Json(admin::pcontacts_of(&api.store, &impu).await?))
}

async fn put_user(
    State(api): State<Arc<Api>>,
    Path(aor): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Failure> {
    let aor = admin::parse_aor(&aor, api.case_sensitive)?;
    #[derive(Deserialize)]
    struct Body {
        password: String,
    }
    let body: Body = serde_json::from_slice(&body).map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            "the body must be {\"password\": \"...\"}".into(),
        )
    })?;
    let created = admin::put_user(&api.store, &aor, &body.password).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "aor": crate::sip::aor::aor_uri(&aor), "created": created })),
    ))
}

async fn remove_user(
    State(api): State<Arc<Api>>,
    Path(aor): Path<String>,
) -> Result<Json<Value>, Failure> {
    let aor = admin::parse_aor(&aor, api.case_sensitive)?;
    admin::remove_user(&api.store, &aor).await?;
    Ok(Json(json!({ "removed": true })))
}
