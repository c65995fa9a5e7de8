//! The proxy's public face, kept where tests, benches and `main` have
//! always found it: [`Proxy`] and what it starts and reports.
//!
//! Nothing lives here; the pieces are in [`crate::app`] (the handle),
//! [`crate::core`] (the actor), [`crate::event`] and [`crate::status`].

pub use crate::app::{Proxy, StartError};
pub use crate::event::{Event, InstanceLink};
pub use crate::status::Status;
