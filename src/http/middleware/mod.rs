//! HTTP middleware, applied in the order listed in [`crate::startup`].

mod request_id;

pub use request_id::{request_id, RequestId, REQUEST_ID_HEADER};
