//! Request, response and event types shared by every pipeline and transport.

mod chat;
mod events;
mod image;
mod image_events;
mod image_settings;
mod resolved;
mod response;
mod schema_limits;
mod tool_choice;

pub use chat::*;
pub use events::*;
pub use image::*;
pub use image_events::*;
pub use image_settings::*;
pub use resolved::*;
pub use response::*;
pub use schema_limits::*;
pub use tool_choice::*;
