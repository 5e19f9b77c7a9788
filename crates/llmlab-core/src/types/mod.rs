//! Request, response and event types shared by every pipeline and transport.

mod chat;
mod events;
mod response;

pub use chat::*;
pub use events::*;
pub use response::*;
