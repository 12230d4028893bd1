//! The table of served routes: every route of the REST API is added through
//! [`RouteTable`], which records its method and path as it adds it to the
//! router, so the list of what the router serves cannot drift from what it
//! actually serves. The OpenAPI test compares that list with the document.

use axum::{
    handler::Handler,
    http::Method,
    routing::{self, MethodRouter},
    Router,
};

use crate::AppState;

/// A router under construction and the (method, path) pairs it serves.
pub struct RouteTable {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// Serves `GET path`.
    pub fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::GET, path, routing::get(h))
    }

    /// Serves `POST path`.
    pub fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::POST, path, routing::post(h))
    }

    /// Serves `PUT path`.
    pub fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::PUT, path, routing::put(h))
    }

    /// Serves `PATCH path`.
    pub fn patch<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::PATCH, path, routing::patch(h))
    }

    /// Serves `DELETE path`.
    pub fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::DELETE, path, routing::delete(h))
    }

    fn add(mut self, method: Method, path: &'static str, route: MethodRouter<AppState>) -> Self {
        // axum merges the method routers of one path.
        self.router = self.router.route(path, route);
        self.served.push((method, path));
        self
    }

    /// The (method, path) pairs served, in the order they were added.
    pub fn served(&self) -> &[(Method, &'static str)] {
        &self.served
    }

    /// The router.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

/// Every route of the API (everything but the portal's static files), with
/// the paths as the OpenAPI document writes them.
pub fn api_routes() -> RouteTable {
    use crate::routes::{
        admin, api_keys, deliveries, event_types, events, jwks, metrics, recoveries, stream,
        subscriptions,
    };
    macro_rules! v1 {
        ($p:literal) => {
            concat!("/api/v1", $p)
        };
    }
    RouteTable::new()
        .post(v1!("/admin/tenants"), admin::create_tenant)
        .post(
            v1!("/admin/tenants/{tenant}/api-keys"),
            api_keys::admin_create,
        )
        .get(
            v1!("/admin/tenants/{tenant}/api-keys"),
            api_keys::admin_list,
        )
        .delete(
            v1!("/admin/tenants/{tenant}/api-keys/{key_id}"),
            api_keys::admin_revoke,
        )
        .post(v1!("/portal/api-keys"), api_keys::create)
        .get(v1!("/portal/api-keys"), api_keys::list)
        .delete(v1!("/portal/api-keys/{key_id}"), api_keys::revoke)
        .get(v1!("/portal/webhooks"), subscriptions::list)
        .post(v1!("/portal/webhooks/subscribe"), subscriptions::subscribe)
        .get(v1!("/portal/webhooks/{id}"), subscriptions::get)
        .patch(v1!("/portal/webhooks/{id}"), subscriptions::update)
        .delete(v1!("/portal/webhooks/{id}"), subscriptions::remove)
        .post(
            v1!("/portal/webhooks/{id}/rotate-secret"),
            subscriptions::rotate_secret,
        )
        .get(v1!("/portal/webhooks/{id}/jwks"), jwks::subscription)
        .get(v1!("/portal/jwks"), jwks::tenant)
        .post(v1!("/portal/webhooks/{id}/pause"), subscriptions::pause)
        .post(v1!("/portal/webhooks/{id}/resume"), subscriptions::resume)
        .post(v1!("/portal/webhooks/{id}/recover"), recoveries::recover)
        .get(v1!("/portal/recoveries/{job_id}"), recoveries::get)
        .post(v1!("/integrations/events"), events::emit)
        .get(v1!("/integrations/events"), events::list)
        .post(v1!("/integrations/events/batch"), events::emit_batch)
        .get(v1!("/integrations/events/{id}"), events::get)
        .post(v1!("/integrations/events/{id}/replay"), events::replay)
        .get(v1!("/integrations/webhooks"), deliveries::list)
        .get(v1!("/integrations/event-types"), event_types::list)
        .put(
            v1!("/integrations/event-types/{event_type}"),
            event_types::register,
        )
        .get(
            v1!("/integrations/event-types/{event_type}"),
            event_types::get,
        )
        .get(v1!("/webhooks/stream"), stream::stream)
        .get(v1!("/openapi.json"), crate::openapi::document)
        .get("/healthz", crate::healthz)
        .get("/readyz", crate::readyz)
        .get("/metrics", metrics::export)
}
