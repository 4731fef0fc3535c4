//! pikube
