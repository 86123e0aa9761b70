// Two natchat modules used on their own, with a made-up clock: no sockets, no codecs.
import Addressing
import KeepAlive
import MonotonicTime
import NATGrouping

// The same-NAT rule: the same public address and the same /24 private prefix.
let alice = NATPosition(publicAddress: IPv4Address(203, 0, 113, 7), privateAddress: IPv4Address(192, 168, 1, 2))
let bob = NATPosition(publicAddress: IPv4Address(203, 0, 113, 7), privateAddress: IPv4Address(192, 168, 1, 3))
let carol = NATPosition(publicAddress: try IPv4Address(parsing: "198.51.100.20"), privateAddress: IPv4Address(192, 168, 1, 4))
print("alice and bob behind one NAT: \(SameNATRule.classic.isSameNAT(alice, bob))")
print("alice and carol behind one NAT: \(SameNATRule.classic.isSameNAT(alice, carol))")

// Where alice sends to bob: his private endpoint first (same NAT), then his public one.
let bobPublic = try Endpoint(parsing: "203.0.113.7:40002")
let order = CandidateOrder.candidates(publicEndpoint: bobPublic, sameNATPrivateAddress: bob.privateAddress)
print("candidates for bob: \(order.map(\.description).joined(separator: ", "))")

// The server's liveness table: a client silent for strictly more than 30 s is expired.
var table = LivenessTable<String>(timeout: .seconds(30))
table.touch("alice", now: .zero)
table.touch("bob", now: .zero + .seconds(20))
let later = Instant.zero + .seconds(31)
print("at t=31s: alice expired \(table.isExpired("alice", now: later)), bob expired \(table.isExpired("bob", now: later))")
