//! `[limits]`: protections against peers that are slow, hostile or
//! broken.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::{
    de_duration, fmt_duration, nonzero, over, parse_duration_arg, positive, token_bytes,
    ConfigError, ReloadClass,
};

/// XEP-0114 servers routinely send stanzas of several KiB (vCards, disco);
/// below this the proxy would reject ordinary traffic.
const MIN_STANZA_BYTES: usize = 4096;

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const MAX_STANZA_BYTES: usize = 524_288;
    pub const MAX_DEPTH: usize = 64;
    pub const MAX_TOKEN_BYTES: usize = 32 * 1024;
    pub const UPSTREAM_MAX_STANZA_BYTES: usize = 2 * 1024 * 1024;
    pub const UPSTREAM_MAX_DEPTH: usize = 65_536;
    pub const UPSTREAM_MAX_TOKEN_BYTES: usize = 2 * 1024 * 1024;
    pub const UPSTREAM_MAX_WRITE_BYTES: usize = 512 * 1024;
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const WRITE_QUEUE: usize = 4096;
    pub const UPSTREAM_BUFFER: usize = 4096;
    /// 8 MiB: an outage's worth of ordinary output (thousands of
    /// stanzas), where 4096 of the largest writable ones would be 2 GiB.
    pub const UPSTREAM_BUFFER_BYTES: usize = 8 * 1024 * 1024;
    pub const TOKENIZER: crate::xml::Tokenizer = crate::xml::Tokenizer::Fast;
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Largest stanza from an instance in bytes [limits.max_stanza_bytes, default 524288]
    #[arg(long, value_name = "BYTES")]
    pub max_stanza_bytes: Option<usize>,
    /// Deepest element nesting from an instance [limits.max_depth, default 64]
    #[arg(long, value_name = "N")]
    pub max_depth: Option<usize>,
    /// Longest attribute value or name from an instance [limits.max_token_bytes, default 32768]
    #[arg(long, value_name = "BYTES")]
    pub max_token_bytes: Option<usize>,
    /// Largest stanza from the server; larger ones are skipped and answered [limits.upstream_max_stanza_bytes, default 2097152]
    #[arg(long, value_name = "BYTES")]
    pub upstream_max_stanza_bytes: Option<usize>,
    /// Deepest element nesting from the server; deeper stanzas are skipped [limits.upstream_max_depth, default 65536]
    #[arg(long, value_name = "N")]
    pub upstream_max_depth: Option<usize>,
    /// Longest attribute value or name from the server; stanzas with longer ones are skipped [limits.upstream_max_token_bytes, default 2097152]
    #[arg(long, value_name = "BYTES")]
    pub upstream_max_token_bytes: Option<usize>,
    /// Largest stanza written to the server (its limit for components); larger answers become policy-violation [limits.upstream_max_write_bytes, default 524288]
    #[arg(long, value_name = "BYTES")]
    pub upstream_max_write_bytes: Option<usize>,
    /// Time a peer gets to send its stream header [limits.header_timeout, default 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub header_timeout: Option<Duration>,
    /// Close an instance connection silent for this long [limits.idle_timeout, default 600s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub idle_timeout: Option<Duration>,
    /// Stanzas queued for writing to the server (instances: --instances-queue) [limits.write_queue, default 4096]
    #[arg(long, value_name = "N")]
    pub write_queue: Option<usize>,
    /// Stanzas from instances held while upstream is down [limits.upstream_buffer, default 4096]
    #[arg(long, value_name = "N")]
    pub upstream_buffer: Option<usize>,
    /// Bytes of those stanzas held while upstream is down [limits.upstream_buffer_bytes, default 8388608]
    #[arg(long, value_name = "BYTES")]
    pub upstream_buffer_bytes: Option<usize>,
    /// XML tokenizer: fast, or rxml (the reference) [limits.tokenizer, default fast]
    #[arg(long, value_name = "NAME")]
    pub tokenizer: Option<crate::xml::Tokenizer>,
}

/// `[limits]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLimits {
    max_stanza_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_token_bytes: Option<usize>,
    upstream_max_stanza_bytes: Option<usize>,
    upstream_max_depth: Option<usize>,
    upstream_max_token_bytes: Option<usize>,
    upstream_max_write_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    idle_timeout: Option<Duration>,
    write_queue: Option<usize>,
    upstream_buffer: Option<usize>,
    upstream_buffer_bytes: Option<usize>,
    tokenizer: Option<crate::xml::Tokenizer>,
}

/// Protections against peers that are slow, hostile or broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Instance links: a stanza over a limit closes that instance's stream
    /// (XEP-0114 practice).
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_token_bytes: usize,
    /// The upstream link: a stanza over a limit is skipped and answered,
    /// and the session goes on (every stanza there was written by some
    /// user; one of them must not cut the link for everybody).
    pub upstream_max_stanza_bytes: usize,
    pub upstream_max_depth: usize,
    pub upstream_max_token_bytes: usize,
    /// The largest stanza written to the server: over the server's own
    /// limit for components, it would close the link.
    pub upstream_max_write_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Stanzas queued for the upstream writer; when it is full, output to
    /// the server waits. Only the upstream link uses it: instance links
    /// are bounded by `instances.queue`.
    pub write_queue: usize,
    pub upstream_buffer: usize,
    /// The same backlog's bound in bytes (answers aside, as for the count).
    pub upstream_buffer_bytes: usize,
    /// Which XML tokenizer frames streams (see `xml::tokenizer`).
    pub tokenizer: crate::xml::Tokenizer,
}

impl LimitsConfig {
    /// The framer limits for an instance link: fatal to that stream.
    pub fn instance_framer(&self) -> crate::xml::FramerLimits {
        crate::xml::FramerLimits {
            max_stanza_bytes: self.max_stanza_bytes,
            max_depth: self.max_depth,
            max_token_bytes: self.max_token_bytes,
            per_stanza: false,
        }
    }

    /// The framer limits for the upstream link: per stanza, skipped.
    pub fn upstream_framer(&self) -> crate::xml::FramerLimits {
        crate::xml::FramerLimits {
            max_stanza_bytes: self.upstream_max_stanza_bytes,
            max_depth: self.upstream_max_depth,
            max_token_bytes: self.upstream_max_token_bytes,
            per_stanza: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_stanza_bytes: defaults::MAX_STANZA_BYTES,
            max_depth: defaults::MAX_DEPTH,
            max_token_bytes: defaults::MAX_TOKEN_BYTES,
            upstream_max_stanza_bytes: defaults::UPSTREAM_MAX_STANZA_BYTES,
            upstream_max_depth: defaults::UPSTREAM_MAX_DEPTH,
            upstream_max_token_bytes: defaults::UPSTREAM_MAX_TOKEN_BYTES,
            upstream_max_write_bytes: defaults::UPSTREAM_MAX_WRITE_BYTES,
            header_timeout: defaults::HEADER_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            write_queue: defaults::WRITE_QUEUE,
            upstream_buffer: defaults::UPSTREAM_BUFFER,
            upstream_buffer_bytes: defaults::UPSTREAM_BUFFER_BYTES,
            tokenizer: defaults::TOKENIZER,
        }
    }
}

impl RawLimits {
    pub(super) fn apply_cli(&mut self, a: &LimitsArgs) {
        let l = self;
        over(&mut l.max_stanza_bytes, &a.max_stanza_bytes);
        over(&mut l.max_depth, &a.max_depth);
        over(&mut l.max_token_bytes, &a.max_token_bytes);
        over(
            &mut l.upstream_max_stanza_bytes,
            &a.upstream_max_stanza_bytes,
        );
        over(&mut l.upstream_max_depth, &a.upstream_max_depth);
        over(&mut l.upstream_max_token_bytes, &a.upstream_max_token_bytes);
        over(&mut l.upstream_max_write_bytes, &a.upstream_max_write_bytes);
        over(&mut l.header_timeout, &a.header_timeout);
        over(&mut l.idle_timeout, &a.idle_timeout);
        over(&mut l.write_queue, &a.write_queue);
        over(&mut l.upstream_buffer, &a.upstream_buffer);
        over(&mut l.upstream_buffer_bytes, &a.upstream_buffer_bytes);
        over(&mut l.tokenizer, &a.tokenizer);
    }

    pub(super) fn resolve(self) -> Result<LimitsConfig, ConfigError> {
        let stanza_bytes = |key: &'static str, v: Option<usize>, default: usize| {
            let v = v.unwrap_or(default);
            if v < MIN_STANZA_BYTES {
                return Err(ConfigError::invalid(
                    key,
                    format!("{v} is too small (minimum {MIN_STANZA_BYTES})"),
                ));
            }
            Ok(v)
        };
        Ok(LimitsConfig {
            max_stanza_bytes: stanza_bytes(
                "limits.max_stanza_bytes",
                self.max_stanza_bytes,
                defaults::MAX_STANZA_BYTES,
            )?,
            max_depth: nonzero(
                "limits.max_depth",
                self.max_depth.unwrap_or(defaults::MAX_DEPTH),
            )?,
            max_token_bytes: token_bytes(
                "limits.max_token_bytes",
                self.max_token_bytes.unwrap_or(defaults::MAX_TOKEN_BYTES),
            )?,
            upstream_max_stanza_bytes: stanza_bytes(
                "limits.upstream_max_stanza_bytes",
                self.upstream_max_stanza_bytes,
                defaults::UPSTREAM_MAX_STANZA_BYTES,
            )?,
            upstream_max_depth: nonzero(
                "limits.upstream_max_depth",
                self.upstream_max_depth
                    .unwrap_or(defaults::UPSTREAM_MAX_DEPTH),
            )?,
            upstream_max_token_bytes: token_bytes(
                "limits.upstream_max_token_bytes",
                self.upstream_max_token_bytes
                    .unwrap_or(defaults::UPSTREAM_MAX_TOKEN_BYTES),
            )?,
            upstream_max_write_bytes: stanza_bytes(
                "limits.upstream_max_write_bytes",
                self.upstream_max_write_bytes,
                defaults::UPSTREAM_MAX_WRITE_BYTES,
            )?,
            header_timeout: positive(
                "limits.header_timeout",
                self.header_timeout.unwrap_or(defaults::HEADER_TIMEOUT),
            )?,
            idle_timeout: positive(
                "limits.idle_timeout",
                self.idle_timeout.unwrap_or(defaults::IDLE_TIMEOUT),
            )?,
            write_queue: nonzero(
                "limits.write_queue",
                self.write_queue.unwrap_or(defaults::WRITE_QUEUE),
            )?,
            upstream_buffer: nonzero(
                "limits.upstream_buffer",
                self.upstream_buffer.unwrap_or(defaults::UPSTREAM_BUFFER),
            )?,
            upstream_buffer_bytes: nonzero(
                "limits.upstream_buffer_bytes",
                self.upstream_buffer_bytes
                    .unwrap_or(defaults::UPSTREAM_BUFFER_BYTES),
            )?,
            tokenizer: self.tokenizer.unwrap_or(defaults::TOKENIZER),
        })
    }
}

impl LimitsConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let (l, d) = (self, fmt_duration);
        let _ = write!(
            s,
            " limits.max_stanza_bytes={} limits.max_depth={} limits.max_token_bytes={} \
             limits.upstream_max_stanza_bytes={} limits.upstream_max_depth={} \
             limits.upstream_max_token_bytes={} limits.upstream_max_write_bytes={} \
             limits.header_timeout={} \
             limits.idle_timeout={} limits.write_queue={} limits.upstream_buffer={} \
             limits.upstream_buffer_bytes={} limits.tokenizer={}",
            l.max_stanza_bytes,
            l.max_depth,
            l.max_token_bytes,
            l.upstream_max_stanza_bytes,
            l.upstream_max_depth,
            l.upstream_max_token_bytes,
            l.upstream_max_write_bytes,
            d(l.header_timeout),
            d(l.idle_timeout),
            l.write_queue,
            l.upstream_buffer,
            l.upstream_buffer_bytes,
            l.tokenizer,
        );
    }

    /// How a reload treats each key of this section that differs in
    /// `new` (see [`crate::reload`]), in the order the keys are logged.
    /// The pattern names every field, without `..`: a key added here and
    /// not classified fails to compile, rather than reloading silently as
    /// "nothing changed" (as `limits.tokenizer` and
    /// `service.worker_threads` once did).
    pub(crate) fn reload_classes(
        &self,
        new: &Self,
        out: &mut dyn FnMut(&'static str, ReloadClass),
    ) {
        let Self {
            max_stanza_bytes: _,
            max_depth: _,
            max_token_bytes: _,
            upstream_max_stanza_bytes: _,
            upstream_max_depth: _,
            upstream_max_token_bytes: _,
            upstream_max_write_bytes: _,
            header_timeout: _,
            idle_timeout: _,
            write_queue: _,
            upstream_buffer: _,
            upstream_buffer_bytes: _,
            tokenizer: _,
        } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        self.framer_reload_classes(new, &mut check);
        check(
            self.upstream_max_write_bytes != new.upstream_max_write_bytes,
            "limits.upstream_max_write_bytes",
            Live,
        );
        check(
            self.header_timeout != new.header_timeout,
            "limits.header_timeout",
            NextConnection,
        );
        check(
            self.idle_timeout != new.idle_timeout,
            "limits.idle_timeout",
            NextConnection,
        );
        check(
            self.write_queue != new.write_queue,
            "limits.write_queue",
            NextConnection,
        );
        check(
            self.upstream_buffer != new.upstream_buffer,
            "limits.upstream_buffer",
            Live,
        );
        check(
            self.upstream_buffer_bytes != new.upstream_buffer_bytes,
            "limits.upstream_buffer_bytes",
            Live,
        );
        // Read when each connection's framer is made (listener, upstream).
        check(
            self.tokenizer != new.tokenizer,
            "limits.tokenizer",
            NextConnection,
        );
    }
    /// The six framer limits of [`Self::reload_classes`]: each
    /// connection's framer is made with them, so new connections get them.
    fn framer_reload_classes(
        &self,
        new: &Self,
        check: &mut impl FnMut(bool, &'static str, ReloadClass),
    ) {
        use ReloadClass::NextConnection;
        check(
            self.max_stanza_bytes != new.max_stanza_bytes,
            "limits.max_stanza_bytes",
            NextConnection,
        );
        check(
            self.max_depth != new.max_depth,
            "limits.max_depth",
            NextConnection,
        );
        check(
            self.max_token_bytes != new.max_token_bytes,
            "limits.max_token_bytes",
            NextConnection,
        );
        check(
            self.upstream_max_stanza_bytes != new.upstream_max_stanza_bytes,
            "limits.upstream_max_stanza_bytes",
            NextConnection,
        );
        check(
            self.upstream_max_depth != new.upstream_max_depth,
            "limits.upstream_max_depth",
            NextConnection,
        );
        check(
            self.upstream_max_token_bytes != new.upstream_max_token_bytes,
            "limits.upstream_max_token_bytes",
            NextConnection,
        );
    }
}
