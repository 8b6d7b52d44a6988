//! `Subscription { userCreated, userUpdated, userDeleted, postCreated }`: live, fed by the
//! `Events` actor, so users changed through any front door (gRPC, GraphQL, bulk, the
//! deletion saga) on any node of a cluster appear, and posts created on this node. A subscriber that
//! falls more than the buffer behind gets a final error and the stream ends.

use std::pin::Pin;

use futures_util::{stream, Stream, StreamExt};
use juniper::{graphql_subscription, FieldError, FieldResult};
use tokio::sync::{mpsc, oneshot};

use super::{
    errors,
    objects::{PostObject, UserObject},
    Context,
};
use crate::actors::events::{Ended, Subscribe, SubscribePosts, UserEventKinds};

/// New users or posts a subscription may hold for a slow client.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// The subscription root.
pub struct Subscription;

type Live<T> = Pin<Box<dyn Stream<Item = FieldResult<T>> + Send>>;

/// Turns a bounded event channel into a stream that ends with an error when the server
/// ended it (the subscriber fell behind, or the cluster link was lost) rather than
/// skipping events silently.
fn live<E: Send + 'static, T: Send + 'static>(
    receiver: mpsc::Receiver<E>,
    ended: oneshot::Receiver<Ended>,
    map: impl Fn(E) -> T + Send + 'static,
) -> Live<T> {
    let items = stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        Some((item, receiver))
    })
    .map(move |item| Ok(map(item)));
    let ending = stream::once(async move { ended.await.ok() }).filter_map(|ended| async move {
        ended
            .map(|ended| match ended {
                Ended::TooSlow => errors::coded(
                    format!(
                        "subscriber too slow: more than {SUBSCRIPTION_BUFFER} events waited; \
                     subscribe again"
                    ),
                    "RESOURCE_EXHAUSTED",
                ),
                Ended::Interrupted => errors::coded(
                    "the link to the other cluster nodes was lost, so events from them may be \
                 missing; subscribe again",
                    errors::code::UNAVAILABLE,
                ),
            })
            .map(Err)
    });
    Box::pin(items.chain(ending))
}

fn unavailable() -> FieldError {
    errors::coded(
        "the event service is not running",
        errors::code::UNAVAILABLE,
    )
}

/// Every user event of `kinds` from now on, each as `map` makes it.
async fn user_events<T: Send + 'static>(
    context: &Context,
    kinds: UserEventKinds,
    map: impl Fn(std::sync::Arc<crate::domain::User>) -> T + Send + 'static,
) -> FieldResult<Live<T>> {
    let subscription = context
        .events
        .send(Subscribe {
            filter: String::new(),
            buffer: SUBSCRIPTION_BUFFER,
            // A GraphQL connection is capped by its own operation limit.
            client: None,
            kinds,
        })
        .await
        .map_err(|_| unavailable())?
        .map_err(|error| errors::coded(error, errors::code::BUSY))?;
    Ok(live(subscription.users, subscription.ended, move |event| {
        map(event.user().clone())
    }))
}

#[graphql_subscription(context = Context)]
impl Subscription {
    /// Every user created from now on, by any front door.
    async fn user_created(context: &Context) -> FieldResult<Live<UserObject>> {
        user_events(context, UserEventKinds::CREATED, |user| {
            UserObject::single((*user).clone())
        })
        .await
    }

    /// Every user updated from now on (as it is after the update), by any front door on
    /// any node.
    async fn user_updated(context: &Context) -> FieldResult<Live<UserObject>> {
        user_events(context, UserEventKinds::UPDATED, |user| {
            UserObject::single((*user).clone())
        })
        .await
    }

    /// The id of every user deleted from now on (once its row is gone).
    async fn user_deleted(context: &Context) -> FieldResult<Live<juniper::ID>> {
        user_events(context, UserEventKinds::DELETED, |user| {
            juniper::ID::new(user.id.to_string())
        })
        .await
    }

    /// Every post created from now on.
    async fn post_created(context: &Context) -> FieldResult<Live<PostObject>> {
        let subscription = context
            .events
            .send(SubscribePosts {
                buffer: SUBSCRIPTION_BUFFER,
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(live(subscription.posts, subscription.ended, |post| {
            PostObject::single((*post).clone())
        }))
    }
}
