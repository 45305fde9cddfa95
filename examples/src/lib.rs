//! Shared pieces of the examples (under construction).
