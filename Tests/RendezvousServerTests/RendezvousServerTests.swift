import Addressing
import Testing
import Logging
import MonotonicTime
import NIOCore
import Registry
@testable import RendezvousServer
import Synchronization
import Transport
import Wire

private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private func at(_ seconds: Int64) -> Instant { Instant.zero + .seconds(seconds) }

private let A = ep("203.0.113.7:40001"), B = ep("203.0.113.7:40002"), C = ep("198.51.100.9:50000")
private let X = ep("192.0.2.99:33333")

/// Collects printed lines from any thread.
private final class LineCollector: Sendable {
    private let storage = Mutex<[String]>([])
    var lines: [String] { storage.withLock { $0 } }
    func append(_ line: String) { storage.withLock { $0.append(line) } }
    func take() -> [String] { storage.withLock { lines in defer { lines.removeAll() }; return lines } }
}

private struct Harness {
    let printed = LineCollector()
    let service: RendezvousService

    init(_ configuration: RendezvousService.Configuration = .init()) {
        let printed = self.printed
        service = RendezvousService(configuration: configuration,
                                    logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                    now: .zero, printLine: { printed.append($0) })
    }

    /// Feeds `text` from `source` at `now`; returns what the service sent, as (destination, text).
    @discardableResult
    func receive(_ text: String, from source: Endpoint, at now: Instant) -> [(Endpoint, String)] {
        receive(Array(text.utf8), from: source, at: now)
    }

    @discardableResult
    func receive(_ bytes: [UInt8], from source: Endpoint, at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: bytes), from: source, now: now, output: &output)
        return output.pending.map { ($0.destination, String(buffer: $0.payload)) }
    }

    /// Feeds `bytes`; returns what the service sent as raw bytes.
    func receiveRaw(_ bytes: [UInt8], from source: Endpoint, at now: Instant) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: bytes), from: source, now: now, output: &output)
        return output.pending.map { ($0.destination, Array($0.payload.readableBytesView)) }
    }

    @discardableResult
    func timeout(at now: Instant) -> [(Endpoint, String)] {
        var output = DatagramOutput()
        service.timeout(now: now, output: &output)
        return output.pending.map { ($0.destination, String(buffer: $0.payload)) }
    }
}

private func same(_ actual: [(Endpoint, String)], _ expected: [(Endpoint, String)]) -> Bool {
    actual.map(\.0) == expected.map(\.0) && actual.map(\.1) == expected.map(\.1)
}

@Suite("RendezvousService")
struct RendezvousServiceTests {
    @Test func registrationPrintsTheSeedLineAndAnswers() {
        let server = Harness()
        let sent = server.receive("alice 10.0.0.5", from: A, at: at(0))
        #expect(same(sent, [(A, "alice 203.0.113.7:40001"), (A, "alice@private:10.0.0.5")]), "\(sent)")
        #expect(server.printed.take() == ["alice 203.0.113.7:40001"])
        #expect(server.service.counters.registrations == 1)
        #expect(server.service.registry.count == 1)
    }

    @Test func secondRegistrationSendsTheListAndTheNewcomersLine() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        let sent = server.receive("bob 10.0.0.6", from: B, at: at(1))
        #expect(same(sent, [
            (B, "alice 203.0.113.7:40001"),
            (B, "alice@private:10.0.0.5"),
            (A, "bob 203.0.113.7:40002"),
            (A, "bob@private:10.0.0.6"),
            (B, "bob 203.0.113.7:40002"),
            (B, "bob@private:10.0.0.6"),
        ]), "\(sent)")
        #expect(server.printed.lines == ["alice 203.0.113.7:40001", "bob 203.0.113.7:40002"])
        #expect(server.service.counters.registrations == 2)
    }

    @Test func unregisterPrintsAndNotifies() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        server.receive("carol 10.9.0.7", from: C, at: at(1))
        _ = server.printed.take()
        let sent = server.receive("alice @exit", from: A, at: at(2))
        #expect(same(sent, [(C, "alice is unregistered 203.0.113.7:40001")]), "\(sent)")
        #expect(server.printed.take() == ["alice is unregistered 203.0.113.7:40001"])
        #expect(server.service.registry.clients.map(\.id.rawValue) == ["carol"])
    }

    @Test func keepAliveIsSilent() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        _ = server.printed.take()
        #expect(server.receive("alice@keepalive", from: A, at: at(10)).isEmpty)
        #expect(server.printed.lines == [])
        #expect(server.service.counters.ignored == 0)
    }

    @Test func malformedDatagramsAreCounted() {
        let server = Harness()
        #expect(server.receive("garbage", from: X, at: at(0)).isEmpty)
        #expect(server.receive([0xFF, 0xFE, 0x41], from: X, at: at(0)).isEmpty)
        #expect(server.receive([UInt8](), from: X, at: at(0)).isEmpty)
        #expect(server.receive(String(repeating: "a", count: 2049), from: X, at: at(0)).isEmpty)
        #expect(server.receive("bad id 10.0.0.1 x y z w v", from: X, at: at(0)).isEmpty)
        #expect(server.receive("bob@chat \u{1B}[2J", from: X, at: at(0)).isEmpty)
        #expect(server.service.counters.malformed == 6)
        #expect(server.service.counters.ignored == 0)
        #expect(server.service.counters.registrations == 0)
        #expect(server.printed.lines == [])
        #expect(server.service.nextDeadline() == nil)
    }

    @Test func ignoredMessagesAreCounted() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        #expect(server.receive("bob@keepalive", from: B, at: at(1)).isEmpty)        // unknown ID
        #expect(server.receive("alice@keepalive", from: X, at: at(1)).isEmpty)      // wrong endpoint
        #expect(server.receive("alice @exit", from: X, at: at(1)).isEmpty)          // wrong endpoint
        #expect(server.receive("alice@chat hi", from: A, at: at(1)).isEmpty)        // not for the server
        #expect(server.service.counters.ignored == 4)
        #expect(server.service.counters.malformed == 0)
        #expect(server.service.registry.count == 1)
    }

    @Test func refusalIsCountedAndExplained() {
        let server = Harness()
        let sent = server.receive("server 10.0.0.1", from: X, at: at(0))
        #expect(same(sent, [(X, "server@chat registration refused: ID server - the ID is reserved")]), "\(sent)")
        #expect(server.service.counters.refused == 1)
        #expect(server.printed.lines == [])
        #expect(server.service.nextDeadline() == nil)
    }

    @Test func sameIDFromAnotherAddressIsRefused() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        let sent = server.receive("alice 10.0.0.9", from: X, at: at(5))
        #expect(same(sent, [(X, "server@chat registration refused: ID alice - the ID is in use from another address")]), "\(sent)")
        #expect(server.service.counters.refused == 1)
        #expect(server.service.registry.entry(for: try! ClientID("alice"))?.publicEndpoint == A)
    }

    @Test func nextDeadlineIsNilWhenEmpty() {
        let server = Harness()
        #expect(server.service.nextDeadline() == nil)
        #expect(server.timeout(at: at(100)).isEmpty)
        #expect(server.service.nextDeadline() == nil)
    }

    @Test func firstRegistrationSchedulesTheSweep() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(3))
        #expect(server.service.nextDeadline() == at(13))
        // later datagrams do not push the sweep back
        server.receive("alice@keepalive", from: A, at: at(8))
        server.receive("bob 10.0.0.6", from: B, at: at(9))
        #expect(server.service.nextDeadline() == at(13))
    }

    @Test func sweepRunsOnlyAtOrAfterTheDeadline() {
        let server = Harness(.init(registry: .init(sweepInterval: .seconds(60))))
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        server.receive("carol 10.9.0.7", from: C, at: at(0))
        server.receive("carol@keepalive", from: C, at: at(40))
        _ = server.printed.take()
        #expect(server.service.nextDeadline() == at(60))
        // alice is past her timeout, but the sweep is not due yet
        #expect(server.timeout(at: at(45)).isEmpty)
        #expect(server.service.registry.count == 2)
        #expect(server.service.nextDeadline() == at(60))
        #expect(server.printed.lines == [])
        // receiving datagrams never sweeps either
        server.receive("bob 10.0.0.6", from: B, at: at(50))
        #expect(server.service.registry.count == 3)
        let sent = server.timeout(at: at(60))
        #expect(same(sent, [(C, "alice is off-line 203.0.113.7:40001"), (B, "alice is off-line 203.0.113.7:40001")]), "\(sent)")
        #expect(server.printed.take() == ["bob 203.0.113.7:40002", "alice is off-line 203.0.113.7:40001"])
        #expect(server.service.counters.evictions == 1)
        #expect(server.service.nextDeadline() == at(120))
    }

    @Test func sweepBoundaryAndDeadlineCadence() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        _ = server.printed.take()
        #expect(server.timeout(at: at(10) - .nanoseconds(1)).isEmpty)
        #expect(server.service.nextDeadline() == at(10))
        for second in [10, 20, 30] as [Int64] {
            #expect(server.timeout(at: at(second)).isEmpty)
            #expect(server.service.nextDeadline() == at(second + 10))
        }
        // alice was silent exactly 30 s at the t=30 sweep and survived it
        #expect(server.service.registry.count == 1)
        #expect(server.printed.lines == [])
        #expect(server.timeout(at: at(40)).isEmpty) // nobody left to tell
        #expect(server.printed.take() == ["alice is off-line 203.0.113.7:40001"])
        #expect(server.service.registry.count == 0)
        #expect(server.service.counters.evictions == 1)
        #expect(server.service.nextDeadline() == nil)
        // a new registration schedules it again
        server.receive("bob 10.0.0.6", from: B, at: at(41))
        #expect(server.service.nextDeadline() == at(51))
    }

    @Test func lateTimeoutSchedulesFromNow() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        server.receive("alice@keepalive", from: A, at: at(10))
        #expect(server.timeout(at: at(17)).isEmpty)
        #expect(server.service.nextDeadline() == at(27))
    }

    @Test func afterEveryoneLeftTheSweepStops() {
        let server = Harness()
        server.receive("alice 10.0.0.5", from: A, at: at(0))
        server.receive("alice @exit", from: A, at: at(1))
        #expect(server.service.nextDeadline() == at(10))
        #expect(server.timeout(at: at(10)).isEmpty)
        #expect(server.service.nextDeadline() == nil)
        #expect(server.service.counters.evictions == 0)
    }
}

@Suite("RendezvousService server-wide limits")
struct RendezvousServiceLimitTests {
    /// Classic registrations (pushed to every classic client, from addresses nobody checked)
    /// share a server-wide rate; offers, which only earn a challenge, do not use it.
    @Test func classicRegistrationsAreCappedServerWideButOffersAreNot() throws {
        var configuration = RendezvousService.Configuration()
        configuration.sources.totalRegistrationsPerSecond = 1
        configuration.sources.totalRegistrationBurst = 3
        let server = Harness(configuration)
        for index in 1...5 {
            let source = Endpoint(address: IPv4Address(198, 51, 100, UInt8(index)), port: 4_000)
            let sent = server.receive("c\(index) 10.0.0.\(index)", from: source, at: at(0))
            #expect(sent.isEmpty == (index > 3), "client \(index): \(sent)")
        }
        #expect(server.service.registry.count == 3)
        #expect(server.service.counters.registrationsRateLimited == 2)
        #expect(server.printed.take() == ["c1 198.51.100.1:4000", "c2 198.51.100.2:4000", "c3 198.51.100.3:4000"])
        // Offers still get their challenge.
        for index in 1...5 {
            let source = Endpoint(address: IPv4Address(192, 0, 2, UInt8(index)), port: 4_000)
            let sent = server.receiveRaw(Array("e\(index) 10.0.0.\(index) natchat/2".utf8), from: source, at: at(0))
            #expect(sent.map(\.0) == [source])
            guard case .challenge? = sent.first.flatMap({ try? ExtendedMessage.decode($0.1) }) else {
                Issue.record("offer \(index) got no challenge: \(sent)"); continue
            }
        }
        #expect(server.service.counters.registrationsRateLimited == 2)
        #expect(server.service.registry.count == 3)
        // A second later the total has room for one more classic client.
        let late = Endpoint(address: IPv4Address(198, 51, 100, 9), port: 4_000)
        #expect(!server.receive("c9 10.0.0.9", from: late, at: at(1)).isEmpty)
        #expect(server.receive("c10 10.0.0.10", from: Endpoint(address: IPv4Address(198, 51, 100, 10), port: 4_000), at: at(1)).isEmpty)
        #expect(server.service.registry.count == 4)
        #expect(server.service.counters.registrationsRateLimited == 3)
    }

    /// With classic off, the refusal is short; to an address that proved nothing it still
    /// goes out only within 3x of what came from there.
    @Test func classicOffRefusalIsShortAndWithinTheAmplificationLimit() {
        var configuration = RendezvousService.Configuration()
        configuration.registry.acceptClassic = false
        let server = Harness(configuration)
        let notice = "server@chat registration refused: natchat/2 only"
        #expect(notice.utf8.count == 48)
        // 20 bytes in, 60 allowed out.
        let sent = server.receive("client1 192.168.1.10", from: X, at: at(0))
        #expect(same(sent, [(X, notice)]), "\(sent)")
        #expect(server.service.counters.refused == 1)
        // 14 bytes in, 42 allowed: the notice is withheld; the retry (28 bytes in) gets it.
        #expect(server.receive("alice 10.0.0.5", from: A, at: at(0)).isEmpty)
        #expect(server.service.counters.amplificationWithheld == 1)
        #expect(same(server.receive("alice 10.0.0.5", from: A, at: at(1)), [(A, notice)]))
        #expect(server.service.counters.refused == 3)
        #expect(server.service.registry.count == 0)
    }
}
