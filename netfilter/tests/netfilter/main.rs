//! Real-traffic tests of the service proxy, as root, in network namespaces each test
//! creates (nothing in the host namespace). One test binary; one module per topic.

mod netns;
