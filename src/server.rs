//! Starting a pikube server: store, API server, and the components it runs.
