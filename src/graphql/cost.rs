//! Admission of GraphQL documents before they execute: fragment checks, then a cost limit.
//!
//! Every field costs 1 plus its children's cost, and a list field multiplies its children's
//! cost by how many items it can return (`users` by its `limit` argument, literal or
//! variable; `posts` by an estimate), so nested lists multiply.
//!
//! The walk is linear in the size of the document: a fragment's cost does not depend on
//! where it is spread, so each fragment is costed once and remembered. Fragment spreads that
//! lead back to themselves, or name no fragment, are refused before anything is costed or
//! validated (juniper would refuse them too, but only after our walk). A hard ceiling on
//! the selections visited per request bounds the work whatever the configured parser limits.

use std::collections::HashMap;

use juniper::{
    http::GraphQLRequest, parser::parse_document_source, DefaultScalarValue, Definition,
    InputValue, Operation, OperationType, ScalarValue as _, Selection, Variables,
};

use super::{query::MAX_USERS_LIMIT, Schema};

/// Items assumed for `User.posts`, which has no limit argument.
pub const POSTS_PER_USER_ESTIMATE: u64 = 10;
/// Deepest chain of fragments spreading fragments that is followed.
pub const MAX_FRAGMENT_NESTING: usize = 32;
/// Most selections (fields, spreads, inline fragments) visited while costing one document.
pub const MAX_SELECTIONS_VISITED: usize = 100_000;

/// Why a document was refused before execution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The document's fragments are unusable (a cycle, an unknown name, too deep a chain,
    /// too much to walk); `GRAPHQL_VALIDATION_FAILED`.
    #[error("{0}")]
    Invalid(String),
    /// The cost is over the limit; `COST_LIMIT_EXCEEDED`.
    #[error(transparent)]
    TooCostly(#[from] CostExceeded),
}

/// A document (or a batch) that costs more than the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query cost {cost} exceeds the limit of {limit}")]
pub struct CostExceeded {
    /// The computed cost.
    pub cost: u64,
    /// The configured limit.
    pub limit: u64,
}

/// The cost of the operation `request` would run; `Ok(None)` when the document does not
/// parse or names no operation it contains (execution then reports that error).
pub fn cost(schema: &Schema, request: &GraphQLRequest) -> Result<Option<u64>, Refusal> {
    let variables = request.variables();
    cost_of(
        schema,
        &request.query,
        request.operation_name.as_deref(),
        &variables,
    )
}

/// [`cost`] of a document given in parts (as the WebSocket protocols carry it).
pub fn cost_of(
    schema: &Schema,
    query: &str,
    operation_name: Option<&str>,
    variables: &Variables<DefaultScalarValue>,
) -> Result<Option<u64>, Refusal> {
    let Ok(document) = parse_document_source::<DefaultScalarValue>(query, &schema.schema) else {
        return Ok(None);
    };
    let mut fragments: HashMap<&str, Fragment<'_, '_>> = HashMap::new();
    for definition in &document {
        if let Definition::Fragment(f) = definition {
            fragments
                .entry(f.item.name.item)
                .or_insert(Fragment::Unvisited(&f.item.selection_set));
        }
    }
    let mut walker = Walker {
        fragments,
        variables,
        visited: 0,
    };
    // Every fragment is checked, spread or not: a cycle among unused fragments is as much
    // an error (and juniper's validation would walk it too).
    let names: Vec<&str> = walker.fragments.keys().copied().collect();
    for name in names {
        walker.fragment(name, 0)?;
    }
    let wanted = operation_name;
    let mut highest = None;
    for definition in &document {
        let Definition::Operation(op) = definition else {
            continue;
        };
        if wanted.is_some() && op.item.name.as_ref().map(|n| n.item) != wanted {
            continue;
        }
        let costed = walker.selections(&op.item.selection_set, 0)?;
        highest = highest.max(Some(costed.cost));
    }
    Ok(highest)
}

/// Whether the operation `query` would run (the one named, or its only one) is a query
/// that selects nothing but introspection (`__schema`, `__type`, `__typename`) at its top
/// level. Parsed under `schema`'s limits; `false` when it does not parse.
pub fn introspection_only(schema: &Schema, query: &str, operation_name: Option<&str>) -> bool {
    // Every request passes here: only a document that names a `__` field is parsed.
    if !query.contains("__") {
        return false;
    }
    chosen_operation_is(schema, query, operation_name, |op| {
        op.operation_type == OperationType::Query
            && op.selection_set.iter().all(|selection| {
                matches!(selection, Selection::Field(field)
                    if matches!(field.item.name.item, "__schema" | "__type" | "__typename"))
            })
    })
}

/// Whether the operation `query` would run (the one named, or its only one) is a
/// mutation. `false` when the document does not parse or names no such operation
/// (execution then reports that error).
pub fn runs_mutation(schema: &Schema, query: &str, operation_name: Option<&str>) -> bool {
    if !query.contains("mutation") {
        return false;
    }
    chosen_operation_is(schema, query, operation_name, |op| {
        op.operation_type == OperationType::Mutation
    })
}

/// Parses `query` and answers `check` for the operation execution would choose: the one
/// named, or the only one. `false` when it does not parse or there is no such operation.
fn chosen_operation_is(
    schema: &Schema,
    query: &str,
    operation_name: Option<&str>,
    check: impl FnOnce(&Operation<'_, DefaultScalarValue>) -> bool,
) -> bool {
    let Ok(document) = parse_document_source::<DefaultScalarValue>(query, &schema.schema) else {
        return false;
    };
    let mut operations = document.iter().filter_map(|definition| match definition {
        Definition::Operation(op) => Some(&op.item),
        Definition::Fragment(_) => None,
    });
    let chosen = match operation_name {
        Some(name) => operations.find(|op| op.name.as_ref().map(|n| n.item) == Some(name)),
        None => operations.next().filter(|_| operations.next().is_none()),
    };
    chosen.is_some_and(check)
}

/// Checks one request against `limit`, returning its cost (0 for a document that does not
/// parse, which execution reports).
pub fn check(schema: &Schema, request: &GraphQLRequest, limit: u64) -> Result<u64, Refusal> {
    check_all(schema, std::slice::from_ref(request), limit)
}

/// Checks one document given in parts against `limit`, returning its cost.
pub fn check_document(
    schema: &Schema,
    query: &str,
    operation_name: Option<&str>,
    variables: &Variables<DefaultScalarValue>,
    limit: u64,
) -> Result<u64, Refusal> {
    let cost = cost_of(schema, query, operation_name, variables)?.unwrap_or(0);
    if cost > limit {
        return Err(CostExceeded { cost, limit }.into());
    }
    Ok(cost)
}

/// Checks a batch: each document must be admissible, and their costs added together must
/// stay within `limit` (a batch is one request's worth of work, not a way around it).
pub fn check_all(schema: &Schema, requests: &[GraphQLRequest], limit: u64) -> Result<u64, Refusal> {
    let mut total = 0u64;
    for request in requests {
        total = total.saturating_add(cost(schema, request)?.unwrap_or(0));
        if total > limit {
            return Err(CostExceeded { cost: total, limit }.into());
        }
    }
    Ok(total)
}

/// A fragment's state in the walk.
#[derive(Clone, Copy)]
enum Fragment<'d, 'a> {
    /// Not costed yet.
    Unvisited(&'d [Selection<'a, DefaultScalarValue>]),
    /// Being costed: reaching it again is a cycle.
    Open,
    /// Costed.
    Done(Costed),
}

/// What costing a selection set found.
#[derive(Clone, Copy, Default)]
struct Costed {
    /// Its cost.
    cost: u64,
    /// The longest chain of fragments it spreads.
    nesting: usize,
}

struct Walker<'d, 'a, 'v> {
    fragments: HashMap<&'a str, Fragment<'d, 'a>>,
    variables: &'v Variables<DefaultScalarValue>,
    visited: usize,
}

impl<'d, 'a> Walker<'d, 'a, '_> {
    /// The cost of the fragment `name` and how deep its chain of fragments goes (1 when it
    /// spreads none); `nesting` is the chain of fragments being costed around it.
    fn fragment(&mut self, name: &'a str, nesting: usize) -> Result<Costed, Refusal> {
        let selections = match self.fragments.get(name) {
            None => {
                return Err(Refusal::Invalid(format!(
                    "unknown fragment `{name}` is spread"
                )))
            }
            Some(Fragment::Done(costed)) => *costed,
            Some(Fragment::Open) => {
                return Err(Refusal::Invalid(format!(
                    "fragment `{name}` spreads itself (a fragment cycle)"
                )))
            }
            Some(Fragment::Unvisited(selections)) => {
                let selections = *selections;
                self.fragments.insert(name, Fragment::Open);
                let inner = self.selections(selections, nesting + 1)?;
                let costed = Costed {
                    cost: inner.cost,
                    nesting: inner.nesting + 1,
                };
                self.fragments.insert(name, Fragment::Done(costed));
                costed
            }
        };
        // Checked on every spread, remembered or not, so the answer does not depend on the
        // order fragments are visited in.
        if nesting + selections.nesting > MAX_FRAGMENT_NESTING {
            return Err(Refusal::Invalid(format!(
                "fragments are nested more than {MAX_FRAGMENT_NESTING} deep"
            )));
        }
        Ok(selections)
    }

    /// The cost of a selection set inside `nesting` fragments, and the deepest chain of
    /// fragments it spreads.
    fn selections(
        &mut self,
        set: &'d [Selection<'a, DefaultScalarValue>],
        nesting: usize,
    ) -> Result<Costed, Refusal> {
        let mut total = Costed::default();
        for selection in set {
            self.visited += 1;
            if self.visited > MAX_SELECTIONS_VISITED {
                return Err(Refusal::Invalid(format!(
                    "the document has more than {MAX_SELECTIONS_VISITED} selections"
                )));
            }
            let costed = match selection {
                Selection::Field(field) => {
                    let field = &field.item;
                    let children = match field.selection_set.as_deref() {
                        Some(set) => self.selections(set, nesting)?,
                        None => Costed::default(),
                    };
                    let limit = field.arguments.as_ref().and_then(|args| {
                        args.item
                            .items
                            .iter()
                            .find(|(key, _)| key.item == "limit")
                            .map(|(_, value)| &value.item)
                    });
                    let items = self.list_size(field.name.item, limit);
                    Costed {
                        cost: 1u64.saturating_add(items.saturating_mul(children.cost)),
                        nesting: children.nesting,
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.selections(&inline.item.selection_set, nesting)?
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.item.name.item, nesting)?
                }
            };
            total.cost = total.cost.saturating_add(costed.cost);
            total.nesting = total.nesting.max(costed.nesting);
        }
        Ok(total)
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

    fn request(query: &str, variables: Option<serde_json::Value>) -> GraphQLRequest {
        let variables = variables.map(|v| serde_json::from_value(v).unwrap());
        GraphQLRequest::new(query.into(), None, variables)
    }

    fn cost_of(query: &str, variables: Option<serde_json::Value>) -> u64 {
        let schema = schema(&GraphqlSettings::default());
        cost(&schema, &request(query, variables)).unwrap().unwrap()
    }

    fn refusal_of(query: &str) -> Refusal {
        let schema = schema(&GraphqlSettings {
            max_tokens: 1_000_000,
            max_fields: 1_000_000,
            max_depth: 1_000,
            ..Default::default()
        });
        cost(&schema, &request(query, None)).expect_err("the document is refused")
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
        let inline = "{ users(limit: 2) { ... on User { id ...f } } } fragment f on User { name }";
        assert_eq!(cost_of(inline, None), 1 + 2 * 2);
    }

    #[test]
    fn text_tricks_do_not_change_the_cost() {
        // The seed counted `{` in the string; braces inside a string literal cost nothing.
        assert_eq!(cost_of("{ users(filter: \"{{{{{{\") { name } }", None), 11);
    }

    #[test]
    fn fragment_cycles_and_unknown_fragments_are_refused_at_once() {
        let cases = [
            (
                "{ user(id: \"x\") { ...F } } fragment F on User { id ...F ...F ...F }",
                "fragment `F` spreads itself",
            ),
            (
                "{ user(id: \"x\") { ...A } } fragment A on User { ...B } fragment B on User { id ...A }",
                "a fragment cycle",
            ),
            (
                "{ user(id: \"x\") { id } } fragment U on User { ...U }",
                "fragment `U` spreads itself",
            ),
            ("{ user(id: \"x\") { ...Missing } }", "unknown fragment `Missing`"),
        ];
        for (query, expected) in cases {
            let refusal = refusal_of(query);
            assert!(
                matches!(&refusal, Refusal::Invalid(m) if m.contains(expected)),
                "{query}: {refusal:?}"
            );
        }
    }

    #[test]
    fn shared_fragments_are_costed_once_so_the_walk_stays_linear() {
        // F0 spreads F1 three times, F1 spreads F2 three times, …: 3^25 expansions if each
        // spread were walked, 26 fragment bodies when each is costed once.
        let mut query = String::from("{ user(id: \"x\") { ...F0 } }");
        for i in 0..25 {
            let next = i + 1;
            query.push_str(&format!(
                " fragment F{i} on User {{ id ...F{next} ...F{next} ...F{next} }}"
            ));
        }
        query.push_str(" fragment F25 on User { id }");
        let schema = schema(&GraphqlSettings {
            max_fields: usize::MAX,
            max_depth: 1_000,
            ..Default::default()
        });
        // Walking every spread would pass MAX_SELECTIONS_VISITED and be refused.
        let cost = cost(&schema, &request(&query, None)).unwrap().unwrap();
        // 1 (user) + Σ 3^i for i in 0..=25 (each level's `id`s).
        let expected = 1 + (0..=25u32).map(|i| 3u64.pow(i)).sum::<u64>();
        assert_eq!(cost, expected);
    }

    #[test]
    fn deeply_chained_fragments_are_refused() {
        let mut query = String::from("{ user(id: \"x\") { ...F0 } }");
        for i in 0..40 {
            query.push_str(&format!(" fragment F{i} on User {{ ...F{} }}", i + 1));
        }
        query.push_str(" fragment F40 on User { id }");
        let refusal = refusal_of(&query);
        assert!(
            matches!(&refusal, Refusal::Invalid(m) if m.contains("nested more than")),
            "{refusal:?}"
        );
    }

    #[test]
    fn a_batch_adds_its_costs() {
        let schema = schema(&GraphqlSettings::default());
        let one = request("{ users(limit: 100) { posts { title } } }", None);
        let batch = vec![one.clone(), one.clone(), one];
        assert_eq!(check_all(&schema, &batch[..2], 10_000), Ok(2 * 1101));
        assert_eq!(
            check_all(&schema, &batch, 3_000),
            Err(Refusal::TooCostly(CostExceeded {
                cost: 3 * 1101,
                limit: 3_000
            }))
        );
    }
}
