//! The node's CNI network config: bridge + host-local IPAM for the node's pod CIDR +
//! portmap (hostPort). No `loopback` plugin: containerd brings up `lo` itself, and with
//! `max_conf_num = 1` only the first conf file by name is loaded.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::json;

use crate::Error;

/// An IPv4 network in CIDR notation (`10.42.0.0/24`); the host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length (0-32).
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The first host address of the network: the bridge's (gateway's) address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("pod CIDR {s:?}: {why}"));
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("missing /prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        // A pod network needs at least the gateway and one pod address.
        if !(1..=30).contains(&prefix) {
            return Err(bad("prefix length must be 1-30"));
        }
        let cidr = Ipv4Cidr { addr, prefix };
        if !cidr.contains(addr) || u32::from(addr) & !(u32::MAX << (32 - prefix)) != 0 {
            return Err(bad("host bits set"));
        }
        Ok(cidr)
    }
}

/// The CNI network of one node: the gateway and the IPAM range derive from `pod_cidr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniConfig {
    /// Network name (also names host-local's and libcni's state under /var/lib/cni).
    pub name: String,
    /// Linux bridge the pods attach to (at most 15 characters).
    pub bridge: String,
    /// The node's pod CIDR (node.spec.podCIDR).
    pub pod_cidr: Ipv4Cidr,
    /// Bridge and veth MTU; the plugin's default (the bridge's) when `None`.
    pub mtu: Option<u32>,
}

impl CniConfig {
    /// pikube's defaults: network `pikube`, bridge `cni0`, no explicit MTU.
    pub fn new(pod_cidr: Ipv4Cidr) -> CniConfig {
        CniConfig {
            name: "pikube".to_string(),
            bridge: "cni0".to_string(),
            pod_cidr,
            mtu: None,
        }
    }

    /// The file name the conflist is written to (`10-<name>.conflist`).
    pub fn file_name(&self) -> String {
        format!("10-{}.conflist", self.name)
    }

    fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(Error::Config(format!("CNI network name {:?}", self.name)));
        }
        let bridge_ok = !self.bridge.is_empty()
            && self.bridge.len() <= 15
            && self
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !bridge_ok {
            return Err(Error::Config(format!(
                "bridge name {:?} (1-15 of [A-Za-z0-9._-])",
                self.bridge
            )));
        }
        if let Some(mtu) = self.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(Error::Config(format!("MTU {mtu} (576-65535)")));
            }
        }
        Ok(())
    }

    /// The conflist as JSON: bridge (gateway, no masquerade — the service proxy does
    /// it — hairpin on) with host-local IPAM over the pod CIDR, then portmap.
    pub fn render(&self) -> Result<serde_json::Value, Error> {
        self.validate()?;
        let mut bridge = json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": self.pod_cidr.to_string(),
                    "gateway": self.pod_cidr.gateway().to_string(),
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        });
        if let (Some(mtu), Some(obj)) = (self.mtu, bridge.as_object_mut()) {
            obj.insert("mtu".to_string(), json!(mtu));
        }
        Ok(json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                bridge,
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        }))
    }
}

/// Writes `cfg` as `<conf_dir>/10-<name>.conflist` atomically (temp file + rename), so
/// containerd never loads a half-written file. Blocking: call it from spawn_blocking or
/// before the runtime starts. Returns the path written.
pub fn write(conf_dir: &Path, cfg: &CniConfig) -> Result<PathBuf, Error> {
    let body = serde_json::to_vec_pretty(&cfg.render()?)
        .map_err(|e| Error::Config(format!("render conflist: {e}")))?;
    let path = conf_dir.join(cfg.file_name());
    crate::fsutil::write_atomic(&path, &body)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: Ipv4Cidr = "10.42.3.0/24".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert!(c.contains(Ipv4Addr::new(10, 42, 3, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 4, 1)));
        assert_eq!(c.to_string(), "10.42.3.0/24");
        for bad in [
            "10.42.3.1/24",
            "10.42.3.0",
            "10.42.3.0/31",
            "x/24",
            "10.42.3.0/33",
            "::1/64",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn conflist_content() {
        let mut cfg = CniConfig::new("10.42.250.0/24".parse().unwrap());
        cfg.mtu = Some(1450);
        let v = cfg.render().unwrap();
        assert_eq!(v["name"], "pikube");
        let plugins = v["plugins"].as_array().unwrap();
        let types: Vec<_> = plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"], "no loopback plugin");
        let b = &plugins[0];
        assert_eq!(b["bridge"], "cni0");
        assert_eq!(b["isGateway"], true);
        assert_eq!(b["ipMasq"], false);
        assert_eq!(b["hairpinMode"], true);
        assert_eq!(b["mtu"], 1450);
        assert_eq!(b["ipam"]["type"], "host-local");
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.42.250.0/24");
        assert_eq!(b["ipam"]["ranges"][0][0]["gateway"], "10.42.250.1");
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
        assert!(CniConfig::new("10.42.0.0/24".parse().unwrap())
            .render()
            .unwrap()["plugins"][0]
            .get("mtu")
            .is_none());
    }

    #[test]
    fn bad_names_refused() {
        let mut cfg = CniConfig::new("10.42.0.0/24".parse().unwrap());
        cfg.bridge = "a-bridge-name-too-long".into();
        assert!(cfg.render().is_err());
        cfg.bridge = "cni0".into();
        cfg.name = "../etc".into();
        assert!(cfg.render().is_err());
    }

    #[test]
    fn write_is_atomic_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CniConfig::new("10.42.1.0/24".parse().unwrap());
        let p = write(dir.path(), &cfg).unwrap();
        assert_eq!(p, dir.path().join("10-pikube.conflist"));
        cfg.pod_cidr = "10.42.2.0/24".parse().unwrap();
        write(dir.path(), &cfg).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.2.0/24"
        );
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temp file left behind");
    }
}
