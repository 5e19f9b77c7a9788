//! The API key on gRPC: the same `Bearer` token the HTTP door takes, read
//! from the `authorization` metadata entry.

use tonic::Status;

use crate::api_key::{self, KeyCheck};

pub fn check<T>(key: Option<&str>, request: &tonic::Request<T>) -> Result<(), Status> {
    let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    match api_key::check(key, authorization) {
        KeyCheck::Allowed => Ok(()),
        refused => Err(Status::unauthenticated(refused.message())),
    }
}
