import Addressing
import Logging
import MonotonicTime
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
@testable import RendezvousServer
import STUN
import Store
import Testing
import Transport
import Synchronization
import Wire

private let alice = try! Endpoint(parsing: "203.0.113.7:40001")
private let mallory = try! Endpoint(parsing: "198.51.100.9:50000")

private func makeService() -> RendezvousService {
    RendezvousService(configuration: .init(), logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                      now: .zero, printLine: { _ in })
}

private func feed(_ service: RendezvousService, _ bytes: [UInt8], from source: Endpoint, at seconds: Int64 = 0) -> [[UInt8]] {
    var output = DatagramOutput()
    service.receive(ByteBuffer(bytes: bytes), from: source, now: .zero + .seconds(seconds), output: &output)
    return output.pending.map { Array($0.payload.readableBytesView) }
}

/// The value of the sample `series` (name with its labels, as exposed) in `text`; `nil` if absent.
private func sample(_ series: String, in text: String) -> Double? {
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard line.hasPrefix(series + " ") else { continue }
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

@Suite("Server counters for the admin listener")
struct AdminCounterTests {
    @Test func classicTrafficAndRefusalsAreCountedByKindAndReason() {
        let service = makeService()
        let registration = Array("alice 10.0.0.5".utf8)
        let answers = feed(service, registration, from: alice)
        #expect(service.counters.received.classic == .init(datagrams: 1, bytes: registration.count))
        #expect(service.counters.sent.classic == .init(datagrams: answers.count, bytes: answers.reduce(0) { $0 + $1.count }))
        #expect(service.counters.registrations == 1)
        #expect(service.counters.registrationsExtended == 0)
        #expect(service.registry.localClientCounts == (classic: 1, extended: 0))

        _ = feed(service, Array("alice 10.0.0.9".utf8), from: mallory)      // the ID is in use elsewhere
        _ = feed(service, Array("server 10.0.0.1".utf8), from: mallory)     // reserved
        #expect(service.counters.refusals.idInUse == 1)
        #expect(service.counters.refusals.reservedID == 1)
        #expect(service.counters.refused == 2)
        #expect(service.counters.received.classic.datagrams == 3)

        _ = feed(service, Array("alice @exit".utf8), from: alice, at: 1)
        #expect(service.registry.localClientCounts == (classic: 0, extended: 0))
    }

    @Test func stunIsCountedInAndOut() {
        let service = makeService()
        var generator = SystemRandomNumberGenerator()
        let request = STUN.bindingRequest(.random(using: &generator))
        let answers = feed(service, request, from: alice)
        #expect(answers.count == 1)
        #expect(service.counters.received.stun == .init(datagrams: 1, bytes: request.count))
        #expect(service.counters.sent.stun == .init(datagrams: 1, bytes: STUN.bindingSuccessLength))
        #expect(service.counters.received.total.datagrams == 1)
    }

    @Test func extendedRegistrationAndKeepAlivesAreCountedByKind() throws {
        let session = try ExtendedKeepAliveServiceTests.registered()
        let counters = session.service.counters
        #expect(counters.received.registration.datagrams == 1)   // the signed registration
        #expect(counters.received.classic.datagrams == 1)        // the offer
        #expect(counters.sent.registration.datagrams == 2)       // challenge, registered
        #expect(counters.registrationsExtended == 1)
        #expect(session.service.registry.localClientCounts == (classic: 0, extended: 1))

        let keepAlive = ExtendedKeepAliveServiceTests.keepAlive(1, key: session.key)
        _ = feed(session.service, keepAlive, from: ExtendedKeepAliveServiceTests.client, at: 1)
        #expect(session.service.counters.received.keepAlive == .init(datagrams: 1, bytes: keepAlive.count))
        #expect(session.service.counters.sent.keepAlive == .init(datagrams: 1, bytes: ExtendedMessage.keepAliveAckLength))
    }
}

@Suite("ServerMetrics")
struct ServerMetricsTests {
    @Test func namesLabelsAndHelpFollowPrometheusConventions() {
        let metrics = ServerMetrics(hasStore: false)
        metrics.update(from: ServerSnapshot())
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(text.contains("# HELP natchat_server_registrations_total "))
        #expect(text.contains("# TYPE natchat_server_registrations_total counter"))
        #expect(text.contains("# TYPE natchat_server_clients gauge"))
        #expect(sample("natchat_server_info{version=\"\(NatchatVersion.current)\"}", in: text) == 1)
        for kind in RendezvousService.TrafficKind.allCases {
            #expect(sample("natchat_server_received_datagrams_total{kind=\"\(kind.rawValue)\"}", in: text) == 0, "\(kind)")
        }
        for reason in ["rate_limit", "amplification", "malformed", "unwritable"] {
            #expect(sample("natchat_server_dropped_datagrams_total{reason=\"\(reason)\"}", in: text) == 0, "\(reason)")
        }
        for outcome in ["direct", "private", "relayed"] {
            #expect(sample("natchat_server_punch_outcomes_total{outcome=\"\(outcome)\"}", in: text) == 0, "\(outcome)")
        }
        // Every counter ends in _total, and no store metric exists without a store.
        for line in text.split(separator: "\n") where line.hasPrefix("# TYPE ") && line.hasSuffix(" counter") {
            #expect(line.split(separator: " ")[2].hasSuffix("_total"), "\(line)")
        }
        #expect(!text.contains("natchat_server_store_"))
    }

    @Test func countersMoveByTheDeltaAndGaugesAreSet() {
        let metrics = ServerMetrics(hasStore: true)
        var snapshot = ServerSnapshot(store: StoreWriter.Statistics())
        snapshot.counters.registrations = 3
        snapshot.counters.registrationsExtended = 1
        snapshot.counters.refusals.claimed = 2
        snapshot.counters.refused = 2
        snapshot.counters.sent.relay = .init(datagrams: 4, bytes: 400)
        snapshot.counters.pathReportsPrivate = 1
        snapshot.transport.droppedUnwritable = 7
        snapshot.extendedClients = 5
        metrics.update(from: snapshot)
        metrics.update(from: snapshot)      // a second scrape of the same figures moves nothing
        var text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(sample("natchat_server_registrations_total{dialect=\"natchat2\"}", in: text) == 1)
        #expect(sample("natchat_server_registrations_total{dialect=\"classic\"}", in: text) == 2)
        #expect(sample("natchat_server_registration_refusals_total{reason=\"claimed\"}", in: text) == 2)
        #expect(sample("natchat_server_sent_bytes_total{kind=\"relay\"}", in: text) == 400)
        #expect(sample("natchat_server_punch_outcomes_total{outcome=\"private\"}", in: text) == 1)
        #expect(sample("natchat_server_dropped_datagrams_total{reason=\"unwritable\"}", in: text) == 7)
        #expect(sample("natchat_server_clients{dialect=\"natchat2\"}", in: text) == 5)
        #expect(sample("natchat_server_store_batches_total", in: text) == 0)

        snapshot.counters.registrations = 10
        snapshot.counters.registrationsExtended = 1
        snapshot.extendedClients = 2
        snapshot.store?.batchesWritten = 3
        snapshot.store?.totalBatchLatency = .milliseconds(1500)
        metrics.update(from: snapshot)
        text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(sample("natchat_server_registrations_total{dialect=\"classic\"}", in: text) == 9)
        #expect(sample("natchat_server_clients{dialect=\"natchat2\"}", in: text) == 2)
        #expect(sample("natchat_server_store_batches_total", in: text) == 3)
        #expect(sample("natchat_server_store_batch_seconds_total", in: text) == 1.5)

        // A figure that went down (it never does in a server) does not move the counter back.
        snapshot.counters.registrations = 4
        metrics.update(from: snapshot)
        text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(sample("natchat_server_registrations_total{dialect=\"classic\"}", in: text) == 9)
    }

    @Test func theClusterLinksFiguresExistOnlyInACluster() {
        var snapshot = ServerSnapshot(cluster: ClusterLink.Status(databaseReachable: false, pendingPresence: 12, pendingClaims: 3))
        let alone = ServerMetrics(hasStore: false)
        alone.update(from: snapshot)
        #expect(!String(decoding: alone.exposition(), as: UTF8.self).contains("natchat_server_cluster_"))

        let member = ServerMetrics(hasStore: true, inCluster: true)
        member.update(from: snapshot)
        var text = String(decoding: member.exposition(), as: UTF8.self)
        #expect(sample("natchat_server_cluster_database_up", in: text) == 0)
        #expect(sample("natchat_server_cluster_pending_presence", in: text) == 12)
        #expect(sample("natchat_server_cluster_pending_claims", in: text) == 3)
        snapshot.cluster?.databaseReachable = true
        member.update(from: snapshot)
        text = String(decoding: member.exposition(), as: UTF8.self)
        #expect(sample("natchat_server_cluster_database_up", in: text) == 1)

        let page = StatusPage(snapshot: snapshot, rates: nil, storeLocation: nil, listening: "x").render()
        #expect(page.contains("data-metric=\"natchat_server_cluster_pending_presence\">12<"))
        #expect(page.contains("The shared database <span class=\"ok\">answers</span>"))
    }

    @Test func twoServersInOneProcessKeepTheirFiguresApart() {
        let first = ServerMetrics(hasStore: false), second = ServerMetrics(hasStore: false)
        var snapshot = ServerSnapshot()
        snapshot.counters.evictions = 3
        first.update(from: snapshot)
        #expect(sample("natchat_server_evictions_total", in: String(decoding: first.exposition(), as: UTF8.self)) == 3)
        #expect(sample("natchat_server_evictions_total", in: String(decoding: second.exposition(), as: UTF8.self)) == 0)
    }
}

@Suite("RateWindow")
struct RateWindowTests {
    private func at(_ seconds: Int64) -> Instant { .zero + .seconds(seconds) }

    @Test func ratesNeedTwoSamplesThenSpanTheWindow() throws {
        var window = RateWindow(window: .seconds(60), interval: .seconds(5))
        #expect(window.rates == nil)
        window.record(.init(datagramsIn: 0, registrations: 0), at: at(0))
        #expect(window.rates == nil)
        window.record(.init(datagramsIn: 100, registrations: 1), at: at(5))
        var rates = try #require(window.rates)
        #expect(rates.datagramsIn == 20)
        #expect(rates.span == .seconds(5))

        // Two minutes at 10 datagrams a second: the rates look back one minute, not to the start.
        var datagrams = 100
        for second in stride(from: 10, through: 125, by: 5) {
            datagrams += 50
            window.record(.init(datagramsIn: datagrams, registrations: 1), at: at(Int64(second)))
        }
        rates = try #require(window.rates)
        #expect(rates.datagramsIn == 10)
        #expect(rates.registrations == 0)
        #expect(rates.span == .seconds(60))
        #expect(window.sampleCount <= 26)
    }

    @Test func anEarlierInstantIsIgnoredAndACounterThatWentDownIsNoNegativeRate() throws {
        var window = RateWindow()
        window.record(.init(refusals: 10), at: at(10))
        window.record(.init(refusals: 99), at: at(5))
        #expect(window.sampleCount == 1)
        window.record(.init(refusals: 4), at: at(20))
        #expect(try #require(window.rates).refusals == 0)
    }

    @Test func samplesCloserThanHalfAnIntervalDoNotCrowdTheMinuteOut() throws {
        var window = RateWindow(window: .seconds(60), interval: .seconds(5))
        window.record(.init(datagramsIn: 0), at: at(0))
        // A page viewed every 100 ms for a minute: only the samples 2.5 s apart are kept.
        for tenth in 1...600 {
            window.record(.init(datagramsIn: tenth), at: .zero + .milliseconds(Int64(tenth) * 100))
        }
        let rates = try #require(window.rates)
        #expect(rates.span == .seconds(60))
        #expect(rates.datagramsIn == 10)
        #expect(window.sampleCount <= 26)
    }
}

@Suite("StatusPage")
struct StatusPageTests {
    @Test func figuresCarryTheirMetricNamesAndEverythingIsEscaped() {
        var snapshot = ServerSnapshot(store: StoreWriter.Statistics())
        snapshot.counters.registrations = 12
        snapshot.counters.refused = 1
        snapshot.counters.refusals.claimed = 1
        snapshot.extendedClients = 3
        let page = StatusPage(snapshot: snapshot, rates: nil, storeLocation: "/tmp/<script>alert(1)</script>",
                              listening: "0.0.0.0:10080").render()
        #expect(page.contains("data-metric=\"natchat_server_registrations_total\">12<"))
        #expect(page.contains("data-metric=\"natchat_server_clients{dialect=&quot;natchat2&quot;}\">3<"))
        #expect(page.contains("data-metric=\"natchat_server_registration_refusals_total{reason=&quot;claimed&quot;}\">1<"))
        #expect(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        #expect(!page.contains("<script"))
        #expect(!page.contains("http://") && !page.contains("https://"))
        #expect(StatusPage.escape("a&b<'\">") == "a&amp;b&lt;&#39;&quot;&gt;")
    }

    @Test func durationsAndDecimals() {
        #expect(StatusPage.duration(0) == "0s")
        #expect(StatusPage.duration(3_725) == "1h 2m 5s")
        #expect(StatusPage.duration(90_061) == "1d 1h 1m 1s")
        #expect(StatusPage.decimal(2.26) == "2.3")
        #expect(StatusPage.decimal(-0.5) == "-0.5")
        #expect(StatusPage.decimal(.nan) == "0")
    }
}

@Suite("AdminHTTPHandler")
struct AdminHTTPHandlerTests {
    /// An EmbeddedChannel with NIO's server codec and the handler, answering `route` with a
    /// body naming it.
    private func makeChannel(failing: Bool = false) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
        try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler { route, eventLoop in
            if failing { return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
            return eventLoop.makeSucceededFuture(AdminResponse(status: .ok, contentType: "text/x-test", body: Array("\(route)".utf8)))
        })
        return channel
    }

    /// Sends `request` (raw HTTP) and returns the raw answer, and whether the channel closed.
    private func exchange(_ request: String, failing: Bool = false) throws -> (answer: String, closed: Bool) {
        let channel = try makeChannel(failing: failing)
        try channel.writeInbound(ByteBuffer(string: request))
        channel.embeddedEventLoop.run()
        var answer = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { answer += String(buffer: buffer) }
        let closed = !channel.isActive
        _ = try? channel.finish()
        return (answer, closed)
    }

    @Test func getServesTheRouteAndCloses() throws {
        let (answer, closed) = try exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(answer.contains("Content-Type: text/x-test\r\n"))
        #expect(answer.contains("Content-Length: 7\r\n"))
        #expect(answer.contains("Connection: close\r\n"))
        #expect(answer.hasSuffix("\r\n\r\nmetrics"))
        #expect(closed)
        // A request left unfinished is not answered, and the connection stays open for it.
        let partial = try exchange("GET /metrics HTTP/1.1\r\n")
        #expect(partial.answer.isEmpty)
        #expect(!partial.closed)
        #expect(try exchange("GET /healthz?verbose=1 HTTP/1.1\r\n\r\n").answer.hasSuffix("health"))
        #expect(try exchange("GET / HTTP/1.1\r\n\r\n").answer.hasSuffix("status"))
    }

    @Test func headHasTheLengthButNoBody() throws {
        let answer = try exchange("HEAD /metrics HTTP/1.1\r\n\r\n").answer
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(answer.contains("Content-Length: 7\r\n"))
        #expect(answer.hasSuffix("\r\n\r\n"))
    }

    @Test func unknownPathsOtherMethodsBodiesAndFailures() throws {
        #expect(try exchange("GET /admin HTTP/1.1\r\n\r\n").answer.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        let post = try exchange("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").answer
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
        #expect(post.contains("Allow: GET, HEAD\r\n"))
        let body = try exchange("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        #expect(body.answer.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"))
        #expect(body.closed)
        #expect(try exchange("GET /metrics HTTP/1.1\r\n\r\n", failing: true).answer.hasPrefix("HTTP/1.1 500 Internal Server Error\r\n"))
    }

    @Test func anIdleConnectionIsClosed() throws {
        let channel = try makeChannel()
        #expect(channel.isActive)
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        #expect(!channel.isActive)
        _ = try? channel.finish()
    }

    @Test func theSizeLimitClosesAnOversizedRequest() throws {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        try channel.pipeline.syncOperations.addHandler(AdminRequestSizeLimit(limit: 16))
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(channel.isActive)
        #expect(try channel.readInbound(as: ByteBuffer.self) != nil)
        try channel.writeInbound(ByteBuffer(string: "X"))
        #expect(!channel.isActive)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        _ = try? channel.finish()
    }
}

@Suite("AdminListener")
struct AdminListenerTests {
    /// Collects what a client connection receives.
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        private let received = Mutex("")
        var text: String { received.withLock { $0 } }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            received.withLock { $0 += String(buffer: buffer) }
        }
    }

    // The time limit only ends a run whose listener failed to close a connection (a hang).
    @Test(.timeLimit(.minutes(1))) func connectionsBeyondTheLimitAreClosedAndTheOthersServed() async throws {
        // One event loop, so that connections are admitted in the order they were accepted.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let listener = try await AdminListener.bind(AdminEndpoint(host: "127.0.0.1", port: 0), group: group,
                                                    limits: .init(maxConnections: 2)) { route, eventLoop in
            eventLoop.makeSucceededFuture(.text(.ok, "\(route)"))
        }
        let port = try #require(listener.localAddress?.port)
        var clients: [(channel: any Channel, collector: Collector)] = []
        for _ in 0..<3 {
            let collector = Collector()
            let channel = try await ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
                }
                .connect(host: "127.0.0.1", port: port).get()
            clients.append((channel, collector))
        }
        // The third is closed by the listener as soon as it is accepted.
        try await clients[2].channel.closeFuture.get()
        #expect(clients[2].collector.text.isEmpty)
        // The first two are served: a request, its answer, then the listener closes.
        for client in clients[..<2] {
            #expect(client.channel.isActive)
            try await client.channel.writeAndFlush(ByteBuffer(string: "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).get()
            try await client.channel.closeFuture.get()
            #expect(client.collector.text.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(client.collector.text.hasSuffix("health\n"))
        }
        await listener.close()
        try await group.shutdownGracefully()
    }

    @Test(.timeLimit(.minutes(1))) func anAddressInUseIsAnError() async throws {
        let first = try await AdminListener.bind(AdminEndpoint(host: "127.0.0.1", port: 0), group: MultiThreadedEventLoopGroup.singleton) {
            _, eventLoop in eventLoop.makeSucceededFuture(.text(.ok, "x"))
        }
        let port = try #require(first.localAddress?.port)
        await #expect(throws: (any Error).self) {
            _ = try await AdminListener.bind(AdminEndpoint(host: "127.0.0.1", port: port), group: MultiThreadedEventLoopGroup.singleton) {
                _, eventLoop in eventLoop.makeSucceededFuture(.text(.ok, "x"))
            }
        }
        await first.close()
    }
}

@Suite("AdminContent")
struct AdminContentTests {
    @Test func healthFollowsTheServiceAndMetricsComeFromTheSnapshot() async {
        var snapshot = ServerSnapshot()
        snapshot.counters.registrations = 1
        let served = AdminContent(storeLocation: nil, listening: "test") { [snapshot] in snapshot }
        #expect(await served.response(for: .health) == .text(.ok, "ok"))
        let metrics = await served.response(for: .metrics)
        #expect(metrics.contentType == "text/plain; version=0.0.4; charset=utf-8")
        #expect(sample("natchat_server_registrations_total{dialect=\"classic\"}", in: String(decoding: metrics.body, as: UTF8.self)) == 1)

        snapshot.serving = false
        let closed = AdminContent(storeLocation: nil, listening: "test") { [snapshot] in snapshot }
        #expect(await closed.response(for: .health).status == .serviceUnavailable)
        let unreachable = AdminContent(storeLocation: nil, listening: "test") { throw ChannelError.ioOnClosedChannel }
        #expect(await unreachable.response(for: .health).status == .serviceUnavailable)
    }

    @Test func thePageShowsRatesAfterTwoSamples() async {
        let clock = ManualClock()
        let counter = Counter()
        let content = AdminContent(storeLocation: nil, listening: "test", clock: clock) {
            var snapshot = ServerSnapshot()
            snapshot.counters.received.stun = .init(datagrams: counter.next() * 50, bytes: 0)
            return snapshot
        }
        await content.sample()
        clock.advance(by: .seconds(5))
        let page = String(decoding: await content.response(for: .status).body, as: UTF8.self)
        #expect(page.contains("<th>datagrams in</th><td class=\"n\">10.0 /s</td>"), "\(page)")
    }

    /// 0, 1, 2, ... across calls from any task.
    final class Counter: Sendable {
        private let value = Mutex(0)
        func next() -> Int {
            value.withLock { current in
                defer { current += 1 }
                return current
            }
        }
    }
}
