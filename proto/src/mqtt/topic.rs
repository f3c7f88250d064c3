//! Placeholder: topic validation is being written.
