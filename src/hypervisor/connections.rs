//! Shared registry of open host connections, keyed by URI.
