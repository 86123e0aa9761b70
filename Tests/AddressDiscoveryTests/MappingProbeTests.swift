import Addressing
import Testing
import AddressDiscovery
import MonotonicTime
import STUN
import TestSupport

private func endpoint(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }

private let primary = endpoint("198.51.100.1:10080")
private let alternate = endpoint("198.51.100.1:10082")
private let local = endpoint("10.0.0.5:10081")
private let mappedA = endpoint("203.0.113.7:40001")
private let mappedB = endpoint("203.0.113.7:40777")

/// A probe plus the transaction IDs of its requests (read back from the datagrams it sends).
private struct Harness {
    var probe: MappingProbe
    var transactions: [Endpoint: STUN.TransactionID] = [:]

    init(alternate: Endpoint? = alternate, local: Endpoint? = local, maxAttempts: Int = 4) {
        var random = SplitMix64(state: 99)
        probe = MappingProbe(primary: primary, alternate: alternate, localEndpoint: local, random: &random,
                             retransmitInterval: .milliseconds(300), maxAttempts: maxAttempts)
    }

    /// Polls and returns the destinations, recording each request's transaction.
    mutating func poll(_ now: Instant) -> [Endpoint] {
        probe.handleTimeout(now: now).compactMap { output -> (bytes: [UInt8], destination: Endpoint)? in
            if case .send(let bytes, let destination) = output { return (bytes, destination) }
            return nil
        }.map { request in
            guard case .bindingRequest(let transaction)? = try? STUN.decode(request.bytes) else {
                Issue.record("not a binding request: \(request.bytes)")
                return request.destination
            }
            if let known = transactions[request.destination] {
                #expect(known == transaction, "a retransmission reuses the transaction")
            }
            transactions[request.destination] = transaction
            return request.destination
        }
    }

    /// Whether the probe neither recognises `message` as an answer nor acts on it.
    mutating func takesNothing(_ message: STUN.Message, from source: Endpoint) -> Bool {
        !probe.isAnswer(message, from: source) && probe.receive(message, from: source).isEmpty
    }

    /// Answers the request sent to `server`; `true` when the probe took it as its own.
    mutating func answer(_ server: Endpoint, mapped: Endpoint, from source: Endpoint? = nil) -> Bool {
        let message = STUN.Message.bindingSuccess(transactions[server]!, mapped: mapped)
        let taken = probe.isAnswer(message, from: source ?? server)
        let outputs = probe.receive(message, from: source ?? server)
        if let outcome = probe.outcome { #expect(outputs == [.settled(outcome)] || outputs.isEmpty) }
        return taken
    }
}

@Suite("MappingProbe")
struct MappingProbeTests {
    @Test func endpointIndependentMapping() {
        var harness = Harness()
        #expect(harness.poll(ms(0)) == [primary, alternate])
        #expect(harness.transactions[primary] != harness.transactions[alternate])
        #expect(harness.probe.outcome == nil)
        #expect(harness.answer(primary, mapped: mappedA) == true)
        #expect(harness.probe.outcome == nil)
        #expect(harness.answer(alternate, mapped: mappedA) == true)
        #expect(harness.probe.outcome == .init(kind: .endpointIndependent, primaryMapping: mappedA, alternateMapping: mappedA))
        #expect(harness.probe.nextDeadline == nil)
        #expect(harness.poll(ms(10_000)).isEmpty)
    }

    @Test func endpointDependentMapping() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        #expect(harness.answer(alternate, mapped: mappedB) == true)
        #expect(harness.answer(primary, mapped: mappedA) == true)
        #expect(harness.probe.outcome == .init(kind: .endpointDependent, primaryMapping: mappedA, alternateMapping: mappedB))
    }

    @Test func sameAddressOtherPortIsDependent() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        _ = harness.answer(primary, mapped: endpoint("203.0.113.7:40001"))
        _ = harness.answer(alternate, mapped: endpoint("203.0.113.7:40002"))
        #expect(harness.probe.outcome?.kind == .endpointDependent)
    }

    @Test func mappingEqualToLocalIsNoNAT() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        _ = harness.answer(primary, mapped: local)
        _ = harness.answer(alternate, mapped: local)
        #expect(harness.probe.outcome == .init(kind: .none, primaryMapping: local, alternateMapping: local))
    }

    @Test func noAnswersGiveUnknownAfterMaxAttempts() {
        var harness = Harness(maxAttempts: 4)
        var sends: [Int64: [Endpoint]] = [:]
        for step in 0...100 { // every 25 ms for 2.5 s
            let now = ms(Int64(step) * 25)
            let sent = harness.poll(now)
            if !sent.isEmpty { sends[Int64(step) * 25] = sent }
        }
        #expect(sends == [0: [primary, alternate], 300: [primary, alternate], 600: [primary, alternate], 900: [primary, alternate]])
        #expect(harness.probe.outcome == .init(kind: .unknown, primaryMapping: nil, alternateMapping: nil))
        #expect(harness.probe.nextDeadline == nil)
    }

    @Test func deadlinesFollowTheInterval() {
        var harness = Harness(maxAttempts: 2)
        #expect(harness.probe.nextDeadline == nil)
        _ = harness.poll(ms(0))
        #expect(harness.probe.nextDeadline == ms(300))
        #expect(harness.poll(ms(299)).isEmpty)
        #expect(harness.poll(ms(350)) == [primary, alternate]) // late wake: next counts from now
        #expect(harness.probe.nextDeadline == ms(650))
        #expect(harness.poll(ms(649)).isEmpty)
        #expect(harness.probe.outcome == nil)
        #expect(harness.poll(ms(650)).isEmpty)
        #expect(harness.probe.outcome?.kind == .unknown)
    }

    @Test func onlyUnansweredServersAreRetried() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        #expect(harness.answer(primary, mapped: mappedA) == true)
        #expect(harness.poll(ms(300)) == [alternate])
        #expect(harness.poll(ms(600)) == [alternate])
        #expect(harness.poll(ms(900)) == [alternate])
        #expect(harness.poll(ms(1200)).isEmpty)
        #expect(harness.probe.outcome == .init(kind: .unknown, primaryMapping: mappedA, alternateMapping: nil))
    }

    @Test func primaryOnlyEqualToLocalIsNoNAT() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        _ = harness.answer(primary, mapped: local)
        for t in stride(from: Int64(300), through: 1200, by: 300) { _ = harness.poll(ms(t)) }
        #expect(harness.probe.outcome == .init(kind: .none, primaryMapping: local, alternateMapping: nil))
    }

    @Test func withoutAlternateTheKindIsUnknown() {
        var harness = Harness(alternate: nil)
        #expect(harness.poll(ms(0)) == [primary])
        #expect(harness.answer(primary, mapped: mappedA) == true)
        #expect(harness.probe.outcome == .init(kind: .unknown, primaryMapping: mappedA, alternateMapping: nil))
    }

    @Test func withoutLocalEndpointEqualMappingsAreCone() {
        var harness = Harness(local: nil)
        _ = harness.poll(ms(0))
        _ = harness.answer(primary, mapped: mappedA)
        _ = harness.answer(alternate, mapped: mappedA)
        #expect(harness.probe.outcome?.kind == .endpointIndependent)
    }

    @Test func responsesFromWrongSourceOrTransactionAreIgnored() {
        var harness = Harness()
        _ = harness.poll(ms(0))
        let primaryTransaction = harness.transactions[primary]!
        let alternateTransaction = harness.transactions[alternate]!
        // Right transaction, wrong source (a third party, or the other server port).
        do { let refused = harness.takesNothing(.bindingSuccess(primaryTransaction, mapped: mappedA), from: endpoint("192.0.2.66:10080")); #expect(refused) }
        do { let refused = harness.takesNothing(.bindingSuccess(primaryTransaction, mapped: mappedA), from: alternate); #expect(refused) }
        // Right source, wrong transaction.
        do { let refused = harness.takesNothing(.bindingSuccess(STUN.TransactionID(high: 1, low: 2), mapped: mappedA), from: primary); #expect(refused) }
        do { let refused = harness.takesNothing(.bindingSuccess(alternateTransaction, mapped: mappedA), from: primary); #expect(refused) }
        // Not a success response.
        do { let refused = harness.takesNothing(.bindingRequest(primaryTransaction), from: primary); #expect(refused) }
        do { let refused = harness.takesNothing(.other(type: 0x0111, primaryTransaction), from: primary); #expect(refused) }
        #expect(harness.probe.outcome == nil)
        // Nothing was taken: both servers are still retried.
        #expect(harness.poll(ms(300)) == [primary, alternate])
        #expect(harness.answer(primary, mapped: mappedA) == true)
        #expect(harness.answer(alternate, mapped: mappedB) == true)
        #expect(harness.probe.outcome?.kind == .endpointDependent)
    }
}
