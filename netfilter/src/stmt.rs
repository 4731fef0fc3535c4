//! Small builders for the nftables JSON statements the renderer uses, so rules read like
//! the nft syntax they stand for (`ip daddr`, `meta l4proto`, `dnat ip to a:p`, …).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload,
    PayloadField, Prefix, CT,
};
use nftables::stmt::{
    JumpTarget, Mangle, Match, NATFamily, NATFlag, Operator, Reject, RejectType, Set, SetOp,
    Statement, VerdictMap, NAT,
};
use nftables::types::RejectCode;

use crate::model::{Ipv4Cidr, Protocol};

/// One rule: a list of statements.
pub type Rule = Vec<Statement<'static>>;
/// An expression with owned strings.
pub type Expr = Expression<'static>;

/// The mark bit that asks `masquerading` to masquerade a connection (kube-proxy's value).
pub const MASQ_MARK: u32 = 0x4000;

fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `ip saddr`.
pub fn ip_saddr() -> Expr {
    payload("ip", "saddr")
}

/// `ip daddr`.
pub fn ip_daddr() -> Expr {
    payload("ip", "daddr")
}

/// `th dport` (the transport header's destination port, any protocol).
pub fn th_dport() -> Expr {
    payload("th", "dport")
}

/// `meta <key>`.
pub fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `ct <key>`.
pub fn ct(key: &'static str) -> Expr {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// A concatenation `a . b . c`.
pub fn concat(parts: Vec<Expr>) -> Expr {
    Expression::Named(NamedExpression::Concat(parts))
}

/// An address literal.
pub fn addr(ip: Ipv4Addr) -> Expr {
    Expression::String(Cow::Owned(ip.to_string()))
}

/// A network literal `a.b.c.d/len`.
pub fn prefix(cidr: Ipv4Cidr) -> Expr {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(cidr.addr())),
        len: u32::from(cidr.prefix()),
    }))
}

/// A reference to a named set or map, `@name`.
pub fn set_ref(name: &str) -> Expr {
    Expression::String(Cow::Owned(format!("@{name}")))
}

/// A protocol literal (`tcp`).
pub fn proto(p: Protocol) -> Expr {
    Expression::String(Cow::Borrowed(p.as_str()))
}

/// `left op right`.
pub fn matches(left: Expr, op: Operator, right: Expr) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `left == right` (for a set reference: `left @set`).
pub fn eq(left: Expr, right: Expr) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

/// `meta l4proto <p>`: needed before a DNAT with a port.
pub fn l4proto(p: Protocol) -> Statement<'static> {
    eq(meta(MetaKey::L4proto), proto(p))
}

/// `ct state new`.
pub fn ct_state_new() -> Statement<'static> {
    matches(
        ct("state"),
        Operator::IN,
        Expression::String(Cow::Borrowed("new")),
    )
}

/// `ct status dnat`.
pub fn ct_status_dnat() -> Statement<'static> {
    matches(
        ct("status"),
        Operator::IN,
        Expression::String(Cow::Borrowed("dnat")),
    )
}

/// `numgen random mod <m> == 0`: true with probability 1/m, fresh on every evaluation.
pub fn one_in(m: u32) -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Numgen(Numgen {
            mode: NgMode::Random,
            ng_mod: m,
            offset: None,
        })),
        Expression::Number(0),
    )
}

/// `jump <chain>`.
pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.to_owned()),
    })
}

/// `goto <chain>`.
pub fn goto(chain: &str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_owned()),
    })
}

/// `return`.
pub fn ret() -> Statement<'static> {
    Statement::Return(None)
}

/// `<key> vmap @<map>`.
pub fn vmap(key: Expr, map: &str) -> Statement<'static> {
    Statement::VerdictMap(VerdictMap {
        key,
        data: set_ref(map),
    })
}

/// `dnat ip to <ip>:<port>`.
pub fn dnat(ip: Ipv4Addr, port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(addr(ip)),
        family: Some(NATFamily::IP),
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

/// `masquerade fully-random`.
pub fn masquerade() -> Statement<'static> {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: Some(HashSet::from([NATFlag::FullyRandom])),
    }))
}

/// `ip daddr . meta l4proto . th dport`: the key of a service entry.
pub fn destination() -> Expr {
    concat(vec![ip_daddr(), meta(MetaKey::L4proto), th_dport()])
}

/// `dnat ip to ip daddr . meta l4proto . th dport map @<addrs> : … map @<ports>`: the
/// endpoint of the packet's service entry in one slot's address and port maps.
pub fn dnat_via_maps(addrs: &str, ports: &str) -> Statement<'static> {
    let lookup = |map: &str| {
        Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
            key: destination(),
            data: set_ref(map),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(lookup(addrs)),
        family: Some(NATFamily::IP),
        port: Some(lookup(ports)),
        flags: None,
    }))
}

/// `meta mark set meta mark | MASQ_MARK`.
pub fn set_masq_mark() -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            Expression::Number(MASQ_MARK),
        ]))),
    })
}

/// `meta mark & MASQ_MARK != 0`.
pub fn has_masq_mark() -> Statement<'static> {
    matches(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(MASQ_MARK),
        ))),
        Operator::NEQ,
        Expression::Number(0),
    )
}

/// `meta mark set meta mark ^ MASQ_MARK` (clears the bit once `has_masq_mark` held).
pub fn clear_masq_mark() -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::XOR(
            meta(MetaKey::Mark),
            Expression::Number(MASQ_MARK),
        ))),
    })
}

/// `update @<set> { ip saddr }`: refreshes a session-affinity entry.
pub fn remember_client(set: &str) -> Statement<'static> {
    Statement::Set(Set {
        op: SetOp::Update,
        elem: ip_saddr(),
        set: Cow::Owned(format!("@{set}")),
    })
}

/// `reject with tcp reset`.
pub fn reject_tcp_reset() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
}

/// `reject` (ICMP port unreachable, for any family).
pub fn reject_port_unreachable() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(
        Some(RejectType::ICMPX),
        Some(RejectCode::PortUnreach),
    )))
}

/// `drop`.
pub fn drop() -> Statement<'static> {
    Statement::Drop(None)
}
