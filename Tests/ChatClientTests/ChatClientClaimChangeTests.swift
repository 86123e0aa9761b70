import Addressing
import ChatClient
import Identity
import MonotonicTime
import Testing
import Wire

// `--release-id` and `--rotate-identity` in the client's state machine: the request waits for
// the registration, is sent again every second until the server answers, and the answer
// becomes an event. A fake clock; the server is played by hand.

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private let S = ep("198.51.100.1:10080"), A = ep("203.0.113.7:40001")
private let alice = id("alice")

private func events(_ outputs: [ChatClientStateMachine.Output]) -> [ClientEvent] {
    outputs.compactMap { if case .event(let event) = $0 { event } else { nil } }
}

private func toServer(_ outputs: [ChatClientStateMachine.Output]) -> [ExtendedMessage] {
    outputs.compactMap {
        guard case .send(let bytes, S) = $0, ExtendedMessage.looksExtended(bytes) else { return nil }
        return try? ExtendedDatagram.decode(bytes).message
    }
}

@Suite("ChatClientStateMachine claim changes")
struct ChatClientClaimChangeTests {
    let identity = IdentityKey(), serverKey = IdentityKey()

    func machine() -> ChatClientStateMachine {
        ChatClientStateMachine(configuration: .init(id: alice, server: S, privateAddress: IPv4Address(10, 0, 0, 5), identity: identity))
    }

    func register(_ machine: inout ChatClientStateMachine, at now: Instant) -> [ChatClientStateMachine.Output] {
        _ = machine.receive(ExtendedMessage.challenge(cookie: Token128(high: 1, low: 1)).encode(), from: S, now: now)
        let registered = ExtendedMessage.registered(serverKey: serverKey.publicKeys.agreement, publicEndpoint: A, keepAliveMillis: 10_000,
                                                    alternatePort: 0, nonce: Token128(high: 2, low: 2), cookie: Token128(high: 1, low: 1))
        return machine.receive(registered.encode(), from: S, now: now)
    }

    @Test func aReleaseWaitsForTheRegistrationIsResentAndAnswered() {
        var client = machine()
        _ = client.start(now: at(0))
        // Asked before the server answered: nothing goes yet.
        #expect(toServer(client.requestClaimChange(.release, now: at(0))).isEmpty)
        #expect(toServer(register(&client, at: at(1))).contains(.releaseClaim(id: alice)))
        #expect(toServer(client.handleTimeout(now: at(1) + .milliseconds(500))).isEmpty)
        #expect(toServer(client.handleTimeout(now: at(2))).contains(.releaseClaim(id: alice)))
        let answered = client.receive(ExtendedMessage.claimChanged(id: alice, keys: nil).encode(), from: S, now: at(3))
        #expect(events(answered) == [.claimReleased])
        #expect(toServer(client.handleTimeout(now: at(10))).filter { $0 == .releaseClaim(id: alice) }.isEmpty)
    }

    @Test func aRotationCarriesTheNewKeysSignatureAndItsAnswerNamesTheNewKey() throws {
        var client = machine()
        _ = client.start(now: at(0))
        _ = register(&client, at: at(0))
        let newKey = IdentityKey()
        let request = try client.rotation(to: newKey)
        let sent = toServer(client.requestClaimChange(request, now: at(1)))
        guard case .rotateKey(alice, let keys, let signature)? = sent.first else {
            Issue.record("no rotation sent: \(sent)"); return
        }
        #expect(keys == newKey.publicKeys)
        #expect(newKey.signing.publicKey.isValidSignature(signature, for: ExtendedMessage.rotationStatement(id: alice, newKeys: keys)))
        // An answer naming other keys is a refusal.
        let other = client.receive(ExtendedMessage.claimChanged(id: alice, keys: identity.publicKeys).encode(), from: S, now: at(2))
        #expect(events(other) == [.claimChangeRefused])
        _ = client.requestClaimChange(request, now: at(3))
        let done = client.receive(ExtendedMessage.claimChanged(id: alice, keys: newKey.publicKeys).encode(), from: S, now: at(4))
        #expect(events(done) == [.claimRotated(fingerprint: newKey.fingerprint)])
    }

    @Test func anUnansweredRequestIsGivenUpAfterTenSendings() {
        var client = machine()
        _ = client.start(now: at(0))
        _ = register(&client, at: at(0))
        var sendings = toServer(client.requestClaimChange(.release, now: at(0))).filter { $0 == .releaseClaim(id: alice) }.count
        var given: [ClientEvent] = []
        for second in 1...15 {
            let outputs = client.handleTimeout(now: at(Int64(second)))
            sendings += toServer(outputs).filter { $0 == .releaseClaim(id: alice) }.count
            given += events(outputs).filter { $0 == .claimChangeUnanswered }
        }
        #expect(sendings == 10)
        #expect(given == [.claimChangeUnanswered])
    }
}
