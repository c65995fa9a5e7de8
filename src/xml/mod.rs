//! XML on the relay path: framing a stream into stanzas, escaping values,
//! the few read-only looks into a stanza that control traffic needs, and
//! the stream error conditions with the one reader of a `<stream:error>`.

// The chunk-feeding driver unit tests and the fuzz targets share.
#[cfg(any(test, feature = "fuzzing"))]
pub mod chunked;
pub mod codec;
// A test oracle (the fast tokenizer held against rxml), for unit tests and
// the fuzz targets only: not part of the proxy's API.
#[cfg(any(test, feature = "fuzzing"))]
pub mod differential;
pub mod escape;
pub mod fast;
pub mod frame;
pub mod framer;
pub mod inspect;
pub mod skip;
pub mod stream_error;
pub mod tokenizer;

pub use codec::CodecError;
pub use frame::{Attr, Frame, Kind, Limit, Skipped, Stanza, StreamHeader};
pub use framer::{parse_one, FrameError, FramerLimits};
pub use stream_error::{StreamCondition, StreamError};
pub use tokenizer::{Framer, Tokenizer};
