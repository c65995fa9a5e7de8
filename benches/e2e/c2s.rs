//! A minimal c2s client (placeholder).
