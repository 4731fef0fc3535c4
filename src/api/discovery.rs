//! Discovery documents (/api, /apis, aggregated discovery) built from the resource registry.
