//! The table of served routes: every route of the REST API is added through
//! [`RouteTable`] with its method, its path and the [`Access`] it needs
//! (public, the admin token, or an API key with one scope), and the router
//! is built from that table, each route behind a guard enforcing its
//! access. So what the router serves and who may call it cannot drift from
//! the table: the OpenAPI test compares the table with the document (paths
//! and scopes), and the scope-matrix test calls every route with keys of
//! every scope.

use axum::{
    handler::Handler,
    http::Method,
    middleware,
    routing::{self, MethodRouter},
    Router,
};
use herald_engine::resources::Scope;

use crate::{
    extract::{guard, Access, Guard},
    AppState,
};

/// One served route.
struct Route {
    method: Method,
    path: &'static str,
    access: Access,
    subprotocol: bool,
    handler: MethodRouter<AppState>,
}

/// A router under construction: each route with its method, path and the
/// [`Access`] it needs (public, the admin token, or an API key scope). The
/// router built from it runs each route's guard before its handler.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `GET path` to callers with `access`.
    pub fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        h: H,
    ) -> Self {
        self.add(Method::GET, path, access, routing::get(h))
    }

    /// Serves `POST path` to callers with `access`.
    pub fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        h: H,
    ) -> Self {
        self.add(Method::POST, path, access, routing::post(h))
    }

    /// Serves `PUT path` to callers with `access`.
    pub fn put<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        h: H,
    ) -> Self {
        self.add(Method::PUT, path, access, routing::put(h))
    }

    /// Serves `PATCH path` to callers with `access`.
    pub fn patch<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        h: H,
    ) -> Self {
        self.add(Method::PATCH, path, access, routing::patch(h))
    }

    /// Serves `DELETE path` to callers with `access`.
    pub fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        h: H,
    ) -> Self {
        self.add(Method::DELETE, path, access, routing::delete(h))
    }

    /// Serves the WebSocket upgrade `GET path` to keys with `scope`, which
    /// a browser may send as the subprotocol `herald.bearer.<key>`.
    pub fn websocket<H: Handler<T, AppState>, T: 'static>(
        mut self,
        path: &'static str,
        scope: Scope,
        h: H,
    ) -> Self {
        self = self.add(Method::GET, path, Access::Key(scope), routing::get(h));
        if let Some(route) = self.routes.last_mut() {
            route.subprotocol = true;
        }
        self
    }

    fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.routes.push(Route {
            method,
            path,
            access,
            subprotocol: false,
            handler,
        });
        self
    }

    /// The (method, path) pairs served, in the order they were added.
    pub fn served(&self) -> Vec<(Method, &'static str)> {
        self.routes
            .iter()
            .map(|r| (r.method.clone(), r.path))
            .collect()
    }

    /// Each (method, path) served with the access it needs.
    pub fn access(&self) -> Vec<(Method, &'static str, Access)> {
        self.routes
            .iter()
            .map(|r| (r.method.clone(), r.path, r.access))
            .collect()
    }

    /// The router: each route behind its guard.
    pub fn into_router(self, state: &AppState) -> Router<AppState> {
        let mut router = Router::new();
        for r in self.routes {
            let guarded = r.handler.layer(middleware::from_fn_with_state(
                Guard {
                    state: state.clone(),
                    access: r.access,
                    subprotocol: r.subprotocol,
                },
                guard,
            ));
            // axum merges the method routers of one path.
            router = router.route(r.path, guarded);
        }
        router
    }
}

/// Every route of the API (everything but the portal's static files), with
/// the paths as the OpenAPI document writes them.
pub fn api_routes() -> RouteTable {
    use crate::routes::{
        admin, api_keys, audit, deliveries, event_types, events, export, jwks, metrics,
        payload_filters, recoveries, stream, subscriptions,
    };
    macro_rules! v1 {
        ($p:literal) => {
            concat!("/api/v1", $p)
        };
    }
    use Access::{AdminToken, Key, Public};
    use Scope::{Admin, EventsRead, EventsReplay, EventsWrite, WebhooksRead, WebhooksWrite};
    RouteTable::new()
        .post(v1!("/admin/tenants"), AdminToken, admin::create_tenant)
        .get(v1!("/admin/audit"), AdminToken, audit::list_operator)
        .delete(
            v1!("/admin/tenants/{tenant}"),
            AdminToken,
            admin::delete_tenant,
        )
        .get(
            v1!("/admin/tenants/{tenant}/export"),
            AdminToken,
            export::export,
        )
        .get(
            v1!("/admin/tenants/{tenant}/quotas"),
            AdminToken,
            admin::get_quotas,
        )
        .put(
            v1!("/admin/tenants/{tenant}/quotas"),
            AdminToken,
            admin::put_quotas,
        )
        .post(
            v1!("/admin/tenants/{tenant}/api-keys"),
            AdminToken,
            api_keys::admin_create,
        )
        .get(
            v1!("/admin/tenants/{tenant}/api-keys"),
            AdminToken,
            api_keys::admin_list,
        )
        .delete(
            v1!("/admin/tenants/{tenant}/api-keys/{key_id}"),
            AdminToken,
            api_keys::admin_revoke,
        )
        .post(v1!("/portal/api-keys"), Key(Admin), api_keys::create)
        .get(v1!("/portal/audit"), Key(Admin), audit::list)
        .get(v1!("/portal/api-keys"), Key(Admin), api_keys::list)
        .delete(
            v1!("/portal/api-keys/{key_id}"),
            Key(Admin),
            api_keys::revoke,
        )
        .get(
            v1!("/portal/webhooks"),
            Key(WebhooksRead),
            subscriptions::list,
        )
        .post(
            v1!("/portal/webhooks/subscribe"),
            Key(WebhooksWrite),
            subscriptions::subscribe,
        )
        .get(
            v1!("/portal/webhooks/{id}"),
            Key(WebhooksRead),
            subscriptions::get,
        )
        .post(
            v1!("/portal/filters/test"),
            Key(WebhooksRead),
            payload_filters::test,
        )
        .patch(
            v1!("/portal/webhooks/{id}"),
            Key(WebhooksWrite),
            subscriptions::update,
        )
        .delete(
            v1!("/portal/webhooks/{id}"),
            Key(WebhooksWrite),
            subscriptions::remove,
        )
        .post(
            v1!("/portal/webhooks/{id}/rotate-secret"),
            Key(WebhooksWrite),
            subscriptions::rotate_secret,
        )
        .get(
            v1!("/portal/webhooks/{id}/jwks"),
            Key(WebhooksRead),
            jwks::subscription,
        )
        .get(v1!("/portal/jwks"), Key(WebhooksRead), jwks::tenant)
        .post(
            v1!("/portal/webhooks/{id}/pause"),
            Key(WebhooksWrite),
            subscriptions::pause,
        )
        .post(
            v1!("/portal/webhooks/{id}/resume"),
            Key(WebhooksWrite),
            subscriptions::resume,
        )
        .post(
            v1!("/portal/webhooks/{id}/recover"),
            Key(EventsReplay),
            recoveries::recover,
        )
        .get(
            v1!("/portal/recoveries/{job_id}"),
            Key(EventsRead),
            recoveries::get,
        )
        .post(v1!("/integrations/events"), Key(EventsWrite), events::emit)
        .get(v1!("/integrations/events"), Key(EventsRead), events::list)
        .post(
            v1!("/integrations/events/batch"),
            Key(EventsWrite),
            events::emit_batch,
        )
        .get(
            v1!("/integrations/events/{id}"),
            Key(EventsRead),
            events::get,
        )
        .post(
            v1!("/integrations/events/{id}/replay"),
            Key(EventsReplay),
            events::replay,
        )
        .get(
            v1!("/integrations/webhooks"),
            Key(WebhooksRead),
            deliveries::list,
        )
        .get(
            v1!("/integrations/event-types"),
            Key(EventsRead),
            event_types::list,
        )
        .put(
            v1!("/integrations/event-types/{event_type}"),
            Key(EventsWrite),
            event_types::register,
        )
        .get(
            v1!("/integrations/event-types/{event_type}"),
            Key(EventsRead),
            event_types::get,
        )
        .websocket(v1!("/webhooks/stream"), EventsRead, stream::stream)
        .get(v1!("/openapi.json"), Public, crate::openapi::document)
        .get("/healthz", Public, crate::healthz)
        .get("/readyz", Public, crate::readyz)
        .get("/metrics", Public, metrics::export)
}
