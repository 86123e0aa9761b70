import Addressing
import Testing
import NATGrouping

private func ip(_ text: String) -> IPv4Address { try! IPv4Address(parsing: text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func pos(_ publicIP: String, _ privateIP: String) -> NATPosition {
    NATPosition(publicAddress: ip(publicIP), privateAddress: ip(privateIP))
}

@Suite("SameNATRule")
struct SameNATRuleTests {
    @Test func classicIsSlash24() {
        #expect(SameNATRule.classic.privatePrefixLength == 24)
        #expect(SameNATRule().privatePrefixLength == 24)
        #expect(SameNATRule.classic == SameNATRule(privatePrefixLength: 24))
    }

    @Test("classic rule", arguments: [
        // same public, same /24
        (pos("203.0.113.7", "192.168.56.1"), pos("203.0.113.7", "192.168.56.200"), true),
        (pos("203.0.113.7", "10.0.0.5"), pos("203.0.113.7", "10.0.0.5"), true),
        // same public, different /24
        (pos("203.0.113.7", "192.168.56.1"), pos("203.0.113.7", "192.168.57.1"), false),
        (pos("203.0.113.7", "10.0.0.5"), pos("203.0.113.7", "10.1.0.5"), false),
        (pos("203.0.113.7", "10.0.0.5"), pos("203.0.113.7", "11.0.0.5"), false),
        // different public, same private
        (pos("203.0.113.7", "192.168.56.1"), pos("203.0.113.8", "192.168.56.1"), false),
        (pos("198.51.100.1", "10.0.0.5"), pos("203.0.113.7", "10.0.0.5"), false),
        // neither
        (pos("198.51.100.1", "10.0.0.5"), pos("203.0.113.7", "10.9.0.5"), false),
    ])
    func classic(_ a: NATPosition, _ b: NATPosition, _ expected: Bool) {
        #expect(SameNATRule.classic.isSameNAT(a, b) == expected)
        #expect(SameNATRule.classic.isSameNAT(b, a) == expected) // symmetric
    }

    @Test func otherPrefixLengths() {
        let a = pos("203.0.113.7", "10.1.2.3")
        let b = pos("203.0.113.7", "10.1.200.3")
        let c = pos("203.0.113.7", "10.2.0.1")
        let d = pos("203.0.113.7", "172.16.0.1")
        let slash16 = SameNATRule(privatePrefixLength: 16)
        #expect(slash16.isSameNAT(a, b))
        #expect(!slash16.isSameNAT(a, c))
        let slash8 = SameNATRule(privatePrefixLength: 8)
        #expect(slash8.isSameNAT(a, c))
        #expect(!slash8.isSameNAT(a, d))
        let slash0 = SameNATRule(privatePrefixLength: 0)
        #expect(slash0.isSameNAT(a, d))
        let slash32 = SameNATRule(privatePrefixLength: 32)
        #expect(slash32.isSameNAT(a, a))
        #expect(!slash32.isSameNAT(a, pos("203.0.113.7", "10.1.2.4")))
        let slash25 = SameNATRule(privatePrefixLength: 25)
        #expect(slash25.isSameNAT(pos("1.1.1.1", "10.0.0.1"), pos("1.1.1.1", "10.0.0.127")))
        #expect(!slash25.isSameNAT(pos("1.1.1.1", "10.0.0.1"), pos("1.1.1.1", "10.0.0.128")))
    }

    @Test func differentPublicIsNeverSameNAT() {
        let a = pos("203.0.113.7", "10.0.0.5")
        let b = pos("203.0.113.9", "10.0.0.5")
        for length in [0, 8, 16, 24, 32] {
            #expect(!SameNATRule(privatePrefixLength: length).isSameNAT(a, b), "prefix /\(length)")
        }
    }

    @Test func prefixLengthIsClamped() {
        #expect(SameNATRule(privatePrefixLength: -3).privatePrefixLength == 0)
        #expect(SameNATRule(privatePrefixLength: 99).privatePrefixLength == 32)
        #expect(SameNATRule(privatePrefixLength: 99).isSameNAT(pos("1.1.1.1", "10.0.0.1"), pos("1.1.1.1", "10.0.0.1")))
        #expect(!SameNATRule(privatePrefixLength: 99).isSameNAT(pos("1.1.1.1", "10.0.0.1"), pos("1.1.1.1", "10.0.0.2")))
    }
}

@Suite("CandidateOrder")
struct CandidateOrderTests {
    @Test func classicPort() {
        #expect(CandidateOrder.classicClientPort == 10081)
    }

    @Test func publicOnlyWithoutSameNAT() {
        #expect(CandidateOrder.candidates(publicEndpoint: ep("203.0.113.7:40000"), sameNATPrivateAddress: nil)
                == [ep("203.0.113.7:40000")])
    }

    @Test func privateFirstWhenSameNAT() {
        #expect(CandidateOrder.candidates(publicEndpoint: ep("203.0.113.7:40000"), sameNATPrivateAddress: ip("10.0.0.5"))
                == [ep("10.0.0.5:10081"), ep("203.0.113.7:40000")])
    }

    @Test func customPrivatePort() {
        #expect(CandidateOrder.candidates(publicEndpoint: ep("203.0.113.7:40000"), sameNATPrivateAddress: ip("10.0.0.5"),
                                          privatePort: 5555)
                == [ep("10.0.0.5:5555"), ep("203.0.113.7:40000")])
    }

    @Test func noDuplicateWhenPrivateEqualsPublic() {
        // No NAT in between: the private endpoint is the public one.
        #expect(CandidateOrder.candidates(publicEndpoint: ep("10.0.0.5:10081"), sameNATPrivateAddress: ip("10.0.0.5"))
                == [ep("10.0.0.5:10081")])
        // Same address, other port: both kept.
        #expect(CandidateOrder.candidates(publicEndpoint: ep("10.0.0.5:20000"), sameNATPrivateAddress: ip("10.0.0.5"))
                == [ep("10.0.0.5:10081"), ep("10.0.0.5:20000")])
    }
}
