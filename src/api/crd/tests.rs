//! Unit tests of definitions and custom resource values.
