//! The OpenAPI 3.1 description of the API, generated with utoipa, served at
//! `GET /openapi.json` and checked in as `orders-api/openapi.json` (a test keeps
//! the two equal).
//!
//! Operations are described where they are handled (`#[utoipa::path]` on the
//! handlers in [`crate::routes`]) and bodies by their own types
//! ([`crate::domain::CreateOrderRequest`], [`crate::domain::order::OrderBody`]),
//! so the description cannot drift from the code. Problem bodies and the
//! operational endpoints (`/health`, `/ready`, `/metrics`) are served by the
//! shared plumbing, not by code of ours: they are described here.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, ResponseBuilder,
        path::{HttpMethod, OperationBuilder},
        schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// Decimal strings the schema describes: 0.01 to 1000000.00, at most two places.
const AMOUNT_PATTERN: &str =
    r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,5}(\.[0-9]{1,2})?|1000000(\.00?)?)$";

/// `amount`: whole units as a number (`30`), or a decimal string (`"29.99"`).
///
/// Decimal JSON numbers such as `29.99` are accepted too; the schema lists only
/// the forms a JSON Schema can pin down exactly (a decimal number's cents cannot
/// be expressed without float rounding).
#[must_use]
pub fn amount_schema() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1_000_000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(AMOUNT_PATTERN)),
        )
        .build()
        .into()
}

/// Reference to the [`ProblemSchema`] for responses.
pub const PROBLEM: &str = "#/components/schemas/Problem";

/// Adds `Problem`: an error body (RFC 9457 problem details) as
/// `plumbing::http::problem` writes it.
struct ProblemSchema;

impl Modify for ProblemSchema {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        let problem = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "An error (RFC 9457 problem details), `application/problem+json`.",
            ))
            .property("type", text("Always `about:blank`."))
            .required("type")
            .property("title", text("The HTTP status phrase."))
            .required("title")
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .description(Some("The HTTP status code."))
                    .minimum(Some(0)),
            )
            .required("status")
            .property("detail", text("What is wrong."))
            .required("detail")
            .property(
                "code",
                text("A stable, machine-readable code (`invalid_amount`, `unavailable`, …)."),
            )
            .required("code");
        openapi
            .components
            .get_or_insert_with(Default::default)
            .schemas
            .insert("Problem".to_owned(), Schema::from(problem).into());
    }
}

/// Adds the `bearer` security scheme the order operations require: a JWT of the
/// identity provider the API trusts (RS256 or ES256; see `AUTH_*`).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An access token of the identity provider the API trusts (RS256 or ES256); its `sub` is the customer.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds the operational endpoints every service gets from
/// `plumbing::endpoints`.
struct OperationalEndpoints;

impl Modify for OperationalEndpoints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let text = |description: &str, content_type: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                )
                .build()
        };
        let endpoints = [
            (
                "/health",
                "health",
                "Liveness: `OK` as long as the process serves HTTP.",
                vec![("200", text("Alive", "text/plain"))],
            ),
            (
                "/ready",
                "ready",
                "Readiness: 200 when the database answers.",
                vec![
                    ("200", text("Ready", "text/plain")),
                    ("503", text("Not ready, with the reason", "text/plain")),
                ],
            ),
            (
                "/metrics",
                "metrics",
                "Prometheus metrics in the OpenMetrics text format.",
                vec![(
                    "200",
                    text(
                        "Request, order and pool metrics",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                )],
            ),
        ];
        for (path, id, summary, responses) in endpoints {
            let mut operation = OperationBuilder::new()
                .tag("operations")
                .summary(Some(summary))
                .operation_id(Some(id));
            for (status, response) in responses {
                operation = operation.response(status, response);
            }
            openapi
                .paths
                .add_path_operation(path, vec![HttpMethod::Get], operation.build());
        }
    }
}

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orders-api",
        description = "Orders REST API of the transactional-outbox pipeline: each accepted order is stored with its OrderCreated event in one transaction."
    ),
    paths(
        crate::routes::orders::create,
        crate::routes::orders::list,
        crate::routes::orders::get,
        crate::routes::openapi,
    ),
    components(schemas(
        crate::domain::CreateOrderRequest,
        crate::domain::order::OrderBody,
        crate::routes::orders::OrderPage
    )),
    modifiers(&ProblemSchema, &BearerScheme, &OperationalEndpoints)
)]
pub struct ApiDoc;

/// The description as pretty JSON (what `/openapi.json` serves and the committed
/// file holds).
///
/// # Errors
/// Only if serialization fails (never in practice).
pub fn json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}
