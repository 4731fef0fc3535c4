//! Strategic merge patch, with the list merge keys of the built-in types.
