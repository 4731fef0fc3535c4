//! The catalogue of served resources: built-in kinds and those added by CRDs.
