//! Any GraphQL document: admission (fragment checks and the cost walk) never panics and
//! finishes quickly (libFuzzer's `-timeout` catches a walk that explodes), under the
//! default limits and under limits loose enough to let large documents through.
#![no_main]

use std::sync::OnceLock;

use juniper::http::GraphQLRequest;
use libfuzzer_sys::fuzz_target;
use switchboard::{
    config::GraphqlSettings,
    graphql::{cost, schema, Schema},
};

fn schemas() -> &'static (Schema, Schema) {
    static SCHEMAS: OnceLock<(Schema, Schema)> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let loose = GraphqlSettings {
            max_depth: 200,
            max_fields: 1_000_000,
            max_tokens: 100_000,
            ..GraphqlSettings::default()
        };
        (schema(&GraphqlSettings::default()), schema(&loose))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let request = GraphQLRequest::new(query.to_owned(), None, None);
    let (strict, loose) = schemas();
    for schema in [strict, loose] {
        let _ = cost::check(schema, &request, 10_000);
        let _ = cost::check_all(schema, &[request.clone(), request.clone()], 10_000);
    }
});
