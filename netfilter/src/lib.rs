//! pikube's service proxy as a library: Services, EndpointSlices and node facts in, one
//! nftables ruleset out, applied as one atomic transaction. Knows nothing of the pikube
//! binary.
