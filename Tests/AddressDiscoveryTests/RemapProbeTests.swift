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
private let mapped = endpoint("203.0.113.7:40001")
private let remapped = endpoint("203.0.113.7:51234")

/// One request the probe sent: where, its transaction, and whether it asked for change-port.
private struct Request: Equatable {
    var destination: Endpoint
    var transaction: STUN.TransactionID
    var changePort: Bool
}

private func requests(_ outputs: [RemapProbe.Output]) -> [Request] {
    outputs.compactMap { output in
        guard case .send(let bytes, let destination) = output,
              case .bindingRequest(let transaction)? = try? STUN.decode(bytes) else { return nil }
        return Request(destination: destination, transaction: transaction, changePort: STUN.changeRequest(bytes)?.1.changePort ?? false)
    }
}

private func settled(_ outputs: [RemapProbe.Output]) -> RemapProbe.Outcome? {
    for case .settled(let outcome) in outputs { return outcome }
    return nil
}

private func makeProbe() -> RemapProbe {
    var random = SplitMix64(state: 7)
    return RemapProbe(primary: primary, alternate: alternate, random: &random)
}

struct RemapProbeTests {
    @Test func changePortRequestGoesFirstThenPlainToTheAlternate() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        #expect(sent.map(\.destination) == [alternate, alternate])
        #expect(sent.map(\.changePort) == [true, false])
        #expect(sent[0].transaction != sent[1].transaction)
        // The change-port flag is on the wire as RFC 5780 §7.2 puts it (attribute 0x0003, flag 0x02).
        let bytes = STUN.bindingRequest(sent[0].transaction, change: .init(changePort: true))
        #expect(Array(bytes.suffix(8)) == [0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02])
    }

    @Test func sameMappingAtTheMainPortKeepsIt() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        #expect(probe.receive(.bindingSuccess(sent[1].transaction, mapped: mapped), from: alternate, now: ms(10)).isEmpty)
        // Nothing goes to the main port before the settle delay.
        #expect(requests(probe.handleTimeout(now: ms(30))).isEmpty)
        #expect(probe.nextDeadline == ms(60))
        let asked = requests(probe.handleTimeout(now: ms(60)))
        #expect(asked.map(\.destination) == [primary])
        #expect(asked.map(\.changePort) == [false])
        let outcome = settled(probe.receive(.bindingSuccess(asked[0].transaction, mapped: mapped), from: primary, now: ms(70)))
        #expect(outcome == .keepsMapping)
        #expect(probe.nextDeadline == nil)
    }

    @Test func anotherMappingAtTheMainPortIsARemap() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        _ = probe.receive(.bindingSuccess(sent[1].transaction, mapped: mapped), from: alternate, now: ms(10))
        let asked = requests(probe.handleTimeout(now: ms(60)))
        let outcome = settled(probe.receive(.bindingSuccess(asked[0].transaction, mapped: remapped), from: primary, now: ms(70)))
        #expect(outcome == .remapsAfterUnsolicited(alternate: mapped, primary: remapped))
    }

    @Test func theChangePortAnswerArrivingMeansUnsolicitedInboundIsAccepted() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        let outcome = settled(probe.receive(.bindingSuccess(sent[0].transaction, mapped: mapped), from: primary, now: ms(5)))
        #expect(outcome == .acceptsUnsolicited)
    }

    @Test func aServerThatIgnoresChangeRequestIsNoticed() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        let outcome = settled(probe.receive(.bindingSuccess(sent[0].transaction, mapped: mapped), from: alternate, now: ms(5)))
        #expect(outcome == .changePortUnsupported)
    }

    @Test func answersFromTheWrongPortOrTransactionAreIgnored() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        // The plain request's answer must come from the alternate port.
        #expect(probe.receive(.bindingSuccess(sent[1].transaction, mapped: mapped), from: primary, now: ms(5)).isEmpty)
        #expect(probe.receive(.bindingSuccess(sent[0].transaction, mapped: mapped), from: endpoint("198.51.100.1:9999"), now: ms(5)).isEmpty)
        var random = SplitMix64(state: 12345)
        #expect(probe.receive(.bindingSuccess(.random(using: &random), mapped: mapped), from: alternate, now: ms(5)).isEmpty)
        #expect(probe.outcome == nil)
        // Still poking: the retransmission reuses both transactions.
        let again = requests(probe.handleTimeout(now: ms(300)))
        #expect(again.map(\.transaction) == sent.map(\.transaction))
    }

    @Test func silenceSettlesAsNoAnswerAfterTheLastAttempt() throws {
        var probe = makeProbe()
        var sends = requests(probe.start(now: ms(0))).count
        var now: Int64 = 0
        var outcome: RemapProbe.Outcome?
        while outcome == nil, now < 10_000 {
            now += 300
            let outputs = probe.handleTimeout(now: ms(now))
            sends += requests(outputs).count
            outcome = settled(outputs)
        }
        #expect(outcome == .noAnswer)
        #expect(sends == 8)  // four attempts of two requests
        #expect(now == 1200)
    }

    @Test func silenceFromTheMainPortSettlesAsNoAnswer() throws {
        var probe = makeProbe()
        let sent = requests(probe.start(now: ms(0)))
        _ = probe.receive(.bindingSuccess(sent[1].transaction, mapped: mapped), from: alternate, now: ms(10))
        var now: Int64 = 60
        var asks = requests(probe.handleTimeout(now: ms(now))).count
        var outcome: RemapProbe.Outcome?
        while outcome == nil, now < 10_000 {
            now += 300
            let outputs = probe.handleTimeout(now: ms(now))
            asks += requests(outputs).count
            outcome = settled(outputs)
        }
        #expect(outcome == .noAnswer)
        #expect(asks == 4)
    }
}
