//! A real cost limit, computed from the parsed document before it executes: every field
//! costs 1 plus its children's cost, and a list field multiplies its children's cost by
//! how many items it can return (`users` by its `limit` argument, literal or variable;
//! `posts` by an estimate), so nested lists multiply.

use std::collections::HashMap;

use juniper::{
    http::GraphQLRequest, parser::parse_document_source, DefaultScalarValue, Definition,
    InputValue, ScalarValue as _, Selection, Variables,
};

use super::{query::MAX_USERS_LIMIT, Schema};

/// Items assumed for `User.posts`, which has no limit argument.
pub const POSTS_PER_USER_ESTIMATE: u64 = 10;
/// Deepest fragment nesting followed (juniper rejects cycles later anyway).
const MAX_FRAGMENT_NESTING: usize = 32;

/// Why a document was refused before execution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query cost {cost} exceeds the limit of {limit}")]
pub struct CostExceeded {
    /// The computed cost.
    pub cost: u64,
    /// The configured limit.
    pub limit: u64,
}

/// The cost of the operation `request` would run, or `None` when the document does not
/// parse (execution then reports the parse error).
pub fn cost(schema: &Schema, request: &GraphQLRequest) -> Option<u64> {
    let document =
        parse_document_source::<DefaultScalarValue>(&request.query, &schema.schema).ok()?;
    let fragments: HashMap<&str, &[Selection<DefaultScalarValue>]> = document
        .iter()
        .filter_map(|d| match d {
            Definition::Fragment(f) => Some((f.item.name.item, f.item.selection_set.as_slice())),
            Definition::Operation(_) => None,
        })
        .collect();
    let variables = request.variables();
    let walker = Walker {
        fragments: &fragments,
        variables: &variables,
    };
    let wanted = request.operation_name.as_deref();
    document
        .iter()
        .filter_map(|d| match d {
            Definition::Operation(op) => Some(&op.item),
            Definition::Fragment(_) => None,
        })
        .filter(|op| wanted.is_none() || op.name.as_ref().map(|n| n.item) == wanted)
        .map(|op| walker.selections(&op.selection_set, 0))
        .max()
}

/// Checks `request` against `limit`.
pub fn check(schema: &Schema, request: &GraphQLRequest, limit: u64) -> Result<(), CostExceeded> {
    match cost(schema, request) {
        Some(cost) if cost > limit => Err(CostExceeded { cost, limit }),
        _ => Ok(()),
    }
}

struct Walker<'a> {
    fragments: &'a HashMap<&'a str, &'a [Selection<'a, DefaultScalarValue>]>,
    variables: &'a Variables<DefaultScalarValue>,
}

impl Walker<'_> {
    fn selections(&self, set: &[Selection<DefaultScalarValue>], nesting: usize) -> u64 {
        if nesting > MAX_FRAGMENT_NESTING {
            return u64::MAX / 2;
        }
        set.iter()
            .map(|selection| match selection {
                Selection::Field(field) => {
                    let field = &field.item;
                    let children = field
                        .selection_set
                        .as_deref()
                        .map_or(0, |set| self.selections(set, nesting + 1));
                    let limit = field.arguments.as_ref().and_then(|args| {
                        args.item
                            .items
                            .iter()
                            .find(|(key, _)| key.item == "limit")
                            .map(|(_, value)| &value.item)
                    });
                    let items = self.list_size(field.name.item, limit);
                    1u64.saturating_add(items.saturating_mul(children))
                }
                Selection::InlineFragment(inline) => {
                    self.selections(&inline.item.selection_set, nesting + 1)
                }
                Selection::FragmentSpread(spread) => self
                    .fragments
                    .get(spread.item.name.item)
                    .map_or(0, |set| self.selections(set, nesting + 1)),
            })
            .fold(0, u64::saturating_add)
    }

    /// How many items the field can return (1 for non-list fields).
    fn list_size(&self, name: &str, limit: Option<&InputValue<DefaultScalarValue>>) -> u64 {
        match name {
            "users" => {
                let limit = limit
                    .and_then(|value| match value {
                        InputValue::Variable(name) => self.variables.get(name),
                        other => Some(other),
                    })
                    .and_then(|value| value.as_scalar()?.try_to_int());
                // An out-of-range limit fails at execution; cost it at the maximum.
                u64::try_from(limit.unwrap_or(10).clamp(1, MAX_USERS_LIMIT)).unwrap_or(1)
            }
            "posts" => POSTS_PER_USER_ESTIMATE,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::GraphqlSettings, graphql::schema};

    fn cost_of(query: &str, variables: Option<serde_json::Value>) -> u64 {
        let variables = variables.map(|v| serde_json::from_value(v).unwrap());
        let request = GraphQLRequest::new(query.into(), None, variables);
        cost(&schema(&GraphqlSettings::default()), &request).unwrap()
    }

    #[test]
    fn scalars_cost_one_each() {
        assert_eq!(cost_of("{ user(id: \"x\") { id name } }", None), 3);
    }

    #[test]
    fn lists_multiply_their_children() {
        // users: 1 + 100 × (posts: 1 + 10 × (title: 1)) = 1 + 100 × 11
        assert_eq!(
            cost_of("{ users(limit: 100) { posts { title } } }", None),
            1101
        );
        assert_eq!(cost_of("{ users { name } }", None), 1 + 10);
        let with_variable = cost_of(
            "query($n: Int!) { users(limit: $n) { name } }",
            Some(serde_json::json!({ "n": 50 })),
        );
        assert_eq!(with_variable, 51);
    }

    #[test]
    fn fragments_count_where_they_are_spread() {
        let query = "{ users(limit: 2) { ...f } } fragment f on User { id name }";
        assert_eq!(cost_of(query, None), 1 + 2 * 2);
    }

    #[test]
    fn text_tricks_do_not_change_the_cost() {
        // The seed counted `{` in the string; braces inside a string literal cost nothing.
        assert_eq!(cost_of("{ users(filter: \"{{{{{{\") { name } }", None), 11);
    }
}
