import Addressing
import Testing
import MonotonicTime
import NIOCore
import NIOEmbedded
@testable import Transport

private let A = Endpoint(address: IPv4Address(203, 0, 113, 7), port: 40001)
private let B = Endpoint(address: IPv4Address(198, 51, 100, 9), port: 50000)
private let S = Endpoint(address: IPv4Address(10, 0, 0, 1), port: 10080)

/// A driver that records what it is given and answers as told.
private final class FakeDriver: DatagramDriver {
    struct Received: Equatable {
        var payload: [UInt8]
        var source: Endpoint
        var now: Instant
    }

    var received: [Received] = []
    var timeouts: [Instant] = []
    var deadlines: [Instant] = []
    /// What to send for each datagram received.
    var replies: (Received) -> [(Endpoint, [UInt8])] = { _ in [] }
    /// What to send on each timeout.
    var timeoutReplies: (Instant) -> [(Endpoint, [UInt8])] = { _ in [] }
    /// Queue the answers with `reply(buffer:to:)` (the sender's socket address reused) rather than `send`.
    var asReplies = false
    /// Write the answers in place with `send(to:maxLength:writing:)`.
    var inPlace = false
    /// Keep a deadline that is due after its timeout (the bug the handler must survive).
    var keepsDueDeadlines = false

    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        let record = Received(payload: Array(payload.readableBytesView), source: source, now: now)
        received.append(record)
        for (destination, bytes) in replies(record) {
            if inPlace {
                output.send(to: destination, maxLength: bytes.count) { writable in
                    writable.copyBytes(from: bytes)
                    return bytes.count
                }
            } else if asReplies {
                output.reply(buffer: ByteBuffer(bytes: bytes), to: destination)
            } else {
                output.send(bytes, to: destination)
            }
        }
    }

    func timeout(now: Instant, output: inout DatagramOutput) {
        timeouts.append(now)
        if !keepsDueDeadlines, !deadlines.isEmpty, deadlines[0] <= now { deadlines.removeFirst() }
        for (destination, bytes) in timeoutReplies(now) { output.send(bytes, to: destination) }
    }

    func nextDeadline() -> Instant? { deadlines.first }
}

/// Counts flushes and writes passing towards the socket.
private final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    var flushes = 0
    var writes = 0

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        writes += 1
        context.write(data, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
}

private struct Harness {
    let driver = FakeDriver()
    let clock = ManualClock(start: Instant.zero + .seconds(100))
    let counter = FlushCounter()
    let handler: DatagramDriverHandler<FakeDriver>
    let channel: EmbeddedChannel

    init(active: Bool = true, deadlines: [Instant] = []) throws {
        driver.deadlines = deadlines
        handler = DatagramDriverHandler(driver: driver, clock: clock)
        channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(handler)
        if active {
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }
    }

    func envelope(_ text: String, from address: SocketAddress) -> AddressedEnvelope<ByteBuffer> {
        AddressedEnvelope(remoteAddress: address, data: channel.allocator.buffer(string: text))
    }

    /// Every envelope written and flushed so far, as (destination, text).
    func sent() throws -> [(Endpoint?, String)] {
        var result: [(Endpoint?, String)] = []
        while let envelope = try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) {
            result.append((Endpoint(envelope.remoteAddress), String(buffer: envelope.data)))
        }
        return result
    }
}

private func v4(_ ip: String, _ port: Int) -> SocketAddress { try! SocketAddress(ipAddress: ip, port: port) }

@Suite("Endpoint <-> SocketAddress")
struct SocketAddressConversionTests {
    @Test func ipv4ToEndpoint() throws {
        #expect(Endpoint(try SocketAddress(ipAddress: "203.0.113.7", port: 40001)) == A)
        #expect(Endpoint(try SocketAddress(ipAddress: "0.0.0.0", port: 0)) == Endpoint(address: IPv4Address(bits: 0), port: 0))
        #expect(Endpoint(try SocketAddress(ipAddress: "255.255.255.255", port: 65535))
                == Endpoint(address: IPv4Address(bits: .max), port: 65535))
    }

    @Test func endpointToIPv4() {
        let address = A.socketAddress
        #expect(address.ipAddress == "203.0.113.7")
        #expect(address.port == 40001)
        #expect(address.protocol == .inet)
        #expect(Endpoint(address) == A)
    }

    @Test func roundTrip() {
        for endpoint in [A, B, S, Endpoint(address: IPv4Address(1, 2, 3, 4), port: 1)] {
            #expect(Endpoint(endpoint.socketAddress) == endpoint)
        }
    }

    @Test func nonIPv4IsNil() throws {
        #expect(Endpoint(try SocketAddress(ipAddress: "::1", port: 5)) == nil)
        #expect(Endpoint(try SocketAddress(ipAddress: "::ffff:1.2.3.4", port: 5)) == nil)
        #expect(Endpoint(try SocketAddress(unixDomainSocketPath: "/tmp/natchat-test.sock")) == nil)
    }
}

@Suite("DatagramOutput")
struct DatagramOutputTests {
    @Test func sendAndDrain() {
        var output = DatagramOutput()
        output.send(Array("one".utf8), to: A)
        output.send(buffer: ByteBuffer(string: "two"), to: B)
        #expect(output.pending.map(\.destination) == [A, B])
        #expect(output.pending.map { String(buffer: $0.payload) } == ["one", "two"])
        let drained = output.drain()
        #expect(drained.map(\.destination) == [A, B])
        #expect(drained.map { String(buffer: $0.payload) } == ["one", "two"])
        #expect(output.pending.isEmpty)
        #expect(output.drain().isEmpty)
    }

    @Test func inPlaceWritersGetTheirLengthAndNothingForZero() {
        var output = DatagramOutput()
        let address = A.socketAddress
        output.handling(datagramFrom: A, address: address) { output in
            output.send(to: A, maxLength: 8) { _ in 0 }                       // nothing written: nothing queued
            output.send(to: A, maxLength: 4) { bytes in
                bytes.copyBytes(from: [1, 2, 3, 4])
                return 99                                                     // claims more than it may: cut to 4
            }
            output.send(to: B, maxLength: 3) { bytes in
                #expect(bytes.count == 3, "the writer sees exactly maxLength bytes")
                bytes.copyBytes(from: [7, 8])
                return 2
            }
        }
        #expect(output.count == 2)
        #expect(output.arenaReplies.map(\.length) == [4, 2])
        #expect(output.arenaReplies.compactMap { output.arena.getBytes(at: $0.start, length: $0.length) } == [[1, 2, 3, 4], [7, 8]])
        // Outside a read batch: a buffer of its own, and still nothing for zero.
        output.removeAll()
        output.send(to: B, maxLength: 8) { _ in 0 }
        output.send(to: B, maxLength: 8) { bytes in
            bytes.copyBytes(from: [5])
            return 1
        }
        #expect(output.pending.map { Array($0.payload.readableBytesView) } == [[5]])
        #expect(output.count == 1)
    }
}

@Suite("DatagramDriverHandler")
struct DatagramDriverHandlerTests {
    @Test func inboundDatagramReachesTheDriver() throws {
        let harness = try Harness()
        try harness.channel.writeInbound(harness.envelope("alice@keepalive", from: v4("203.0.113.7", 40001)))
        #expect(harness.driver.received == [.init(payload: Array("alice@keepalive".utf8), source: A, now: Instant.zero + .seconds(100))])
        harness.clock.advance(by: .seconds(5))
        try harness.channel.writeInbound(harness.envelope("x", from: v4("198.51.100.9", 50000)))
        #expect(harness.driver.received.map(\.source) == [A, B])
        #expect(harness.driver.received.map(\.now) == [Instant.zero + .seconds(100), Instant.zero + .seconds(105)])
        #expect(harness.handler.statistics == TransportStatistics(datagramsReceived: 2, datagramsSent: 0, nonIPv4Dropped: 0, errors: 0))
        #expect(try harness.sent().isEmpty)
        #expect(harness.counter.flushes == 0)
    }

    @Test func driverOutputIsWrittenOnReadCompleteWithOneFlush() throws {
        let harness = try Harness()
        harness.driver.replies = { received in
            [(received.source, Array("echo \(String(decoding: received.payload, as: UTF8.self))".utf8)), (S, Array("copy".utf8))]
        }
        let pipeline = harness.channel.pipeline.syncOperations
        pipeline.fireChannelRead(NIOAny(harness.envelope("a", from: v4("203.0.113.7", 40001))))
        pipeline.fireChannelRead(NIOAny(harness.envelope("b", from: v4("198.51.100.9", 50000))))
        // nothing written before the read batch completes
        #expect(harness.counter.writes == 0)
        #expect(try harness.sent().isEmpty)
        pipeline.fireChannelReadComplete()
        #expect(harness.counter.writes == 4)
        #expect(harness.counter.flushes == 1)
        let sent = try harness.sent()
        #expect(sent.map(\.0) == [A, S, B, S])
        #expect(sent.map(\.1) == ["echo a", "copy", "echo b", "copy"])
        #expect(harness.handler.statistics.datagramsSent == 4)
        #expect(harness.handler.statistics.datagramsReceived == 2)
        // another batch with nothing to send: no extra flush
        harness.driver.replies = { _ in [] }
        try harness.channel.writeInbound(harness.envelope("c", from: v4("203.0.113.7", 40001)))
        #expect(harness.counter.flushes == 1)
    }

    @Test func inPlaceRepliesAreWrittenPerBatchAndOlderBatchesStayIntact() throws {
        let harness = try Harness()
        harness.driver.inPlace = true
        harness.driver.replies = { received in
            // The sender's socket address is reused; another destination's comes from the cache.
            [(received.source, Array("re \(String(decoding: received.payload, as: UTF8.self))".utf8)), (S, Array("copy".utf8))]
        }
        let pipeline = harness.channel.pipeline.syncOperations
        pipeline.fireChannelRead(NIOAny(harness.envelope("a", from: v4("203.0.113.7", 40001))))
        pipeline.fireChannelRead(NIOAny(harness.envelope("bb", from: v4("198.51.100.9", 50000))))
        pipeline.fireChannelReadComplete()
        // The first batch is still held by the channel (not read out) while the second is written.
        pipeline.fireChannelRead(NIOAny(harness.envelope("ccc", from: v4("203.0.113.7", 40001))))
        pipeline.fireChannelReadComplete()
        let sent = try harness.sent()
        #expect(sent.map(\.1) == ["re a", "copy", "re bb", "copy", "re ccc", "copy"])
        #expect(sent.map(\.0) == [A, S, B, S, A, S])
        #expect(harness.counter.flushes == 2)
        #expect(harness.handler.statistics.datagramsSent == 6)
    }

    @Test func aBatchLargerThanTheArenaFallsBackToBuffers() throws {
        let harness = try Harness()
        harness.driver.inPlace = true
        harness.driver.replies = { received in [(received.source, Array(repeating: received.payload[0], count: 1_000))] }
        let pipeline = harness.channel.pipeline.syncOperations
        let count = DatagramOutput.arenaCapacity / 1_000 + 20
        for index in 0..<count {
            pipeline.fireChannelRead(NIOAny(harness.envelope(String(UnicodeScalar(UInt8(65 + index % 26))), from: v4("203.0.113.7", 40001))))
        }
        pipeline.fireChannelReadComplete()
        let sent = try harness.sent()
        #expect(sent.count == count)
        #expect(sent.allSatisfy { $0.0 == A && $0.1.utf8.count == 1_000 })
        // Every answer carries its own request's letter, whichever buffer it was written in.
        #expect(Set(sent.map { $0.1.first }).count == 26)
        #expect(sent.map { $0.1 } == (0..<count).map { String(repeating: String(UnicodeScalar(UInt8(65 + $0 % 26))), count: 1_000) })
    }

    @Test func nonIPv4SourceIsCountedAndDropped() throws {
        let harness = try Harness()
        try harness.channel.writeInbound(harness.envelope("alice@keepalive", from: try SocketAddress(ipAddress: "2001:db8::1", port: 40001)))
        #expect(harness.driver.received.isEmpty)
        #expect(harness.handler.statistics == TransportStatistics(datagramsReceived: 1, datagramsSent: 0, nonIPv4Dropped: 1, errors: 0))
        try harness.channel.writeInbound(harness.envelope("ok", from: v4("203.0.113.7", 40001)))
        #expect(harness.driver.received.map(\.source) == [A])
        #expect(harness.handler.statistics.nonIPv4Dropped == 1)
        #expect(harness.handler.statistics.datagramsReceived == 2)
    }

    @Test func performRunsTheBodyAndSendsAtOnce() throws {
        let harness = try Harness()
        harness.clock.advance(by: .seconds(1))
        var seenNow: Instant?
        harness.handler.perform { driver, output, now in
            seenNow = now
            output.send(Array("alice 10.0.0.5".utf8), to: S)
        }
        #expect(seenNow == Instant.zero + .seconds(101))
        #expect(harness.counter.flushes == 1)
        let sent = try harness.sent()
        #expect(sent.map(\.0) == [S])
        #expect(sent.map(\.1) == ["alice 10.0.0.5"])
    }

    @Test func errorsAreCountedAndTheChannelStaysOpen() throws {
        let harness = try Harness()
        harness.channel.pipeline.fireErrorCaught(IOError(errnoCode: 101, reason: "sendmsg"))
        harness.channel.pipeline.fireErrorCaught(IOError(errnoCode: 111, reason: "recvmsg"))
        #expect(harness.handler.statistics.errors == 2)
        #expect(harness.channel.isActive)
        try harness.channel.writeInbound(harness.envelope("still", from: v4("203.0.113.7", 40001)))
        #expect(harness.driver.received.count == 1)
    }

    @Test func timerFiresAtTheDriversDeadline() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(105), Instant.zero + .seconds(115)])
        harness.driver.timeoutReplies = { now in [(S, Array("tick \(now.nanoseconds / 1_000_000_000)".utf8))] }
        let loop = harness.channel.embeddedEventLoop
        loop.advanceTime(by: .seconds(4))
        #expect(harness.driver.timeouts == [])
        harness.clock.advance(by: .seconds(5))
        loop.advanceTime(by: .seconds(1))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(105)])
        var sent = try harness.sent()
        #expect(sent.map(\.0) == [S])
        #expect(sent.map(\.1) == ["tick 105"])
        // re-armed for the next deadline (10 s later)
        loop.advanceTime(by: .seconds(9))
        #expect(harness.driver.timeouts.count == 1)
        harness.clock.advance(by: .seconds(10))
        loop.advanceTime(by: .seconds(1))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(105), Instant.zero + .seconds(115)])
        sent = try harness.sent()
        #expect(sent.map(\.1) == ["tick 115"])
        // no deadline left: no more timeouts
        loop.advanceTime(by: .seconds(1_000))
        #expect(harness.driver.timeouts.count == 2)
    }

    @Test func noTimerBeforeTheChannelIsActive() throws {
        let harness = try Harness(active: false, deadlines: [Instant.zero + .seconds(101)])
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(harness.driver.timeouts == [])
        try harness.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        harness.clock.advance(by: .seconds(1))
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(101)])
    }

    @Test func timerIsReArmedWhenADatagramMovesTheDeadline() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(200)])
        harness.driver.replies = { _ in
            harness.driver.deadlines = [Instant.zero + .seconds(102)]
            return []
        }
        try harness.channel.writeInbound(harness.envelope("x", from: v4("203.0.113.7", 40001)))
        harness.clock.advance(by: .seconds(2))
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(102)])
    }

    @Test func aDeadlineThatDoesNotMoveIsCountedAndSlowedInsteadOfSpinning() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(100)])
        harness.driver.keepsDueDeadlines = true
        let loop = harness.channel.embeddedEventLoop
        loop.run()
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(100)])
        // The driver still wants the instant it was just called at: not again on this turn...
        loop.run()
        #expect(harness.driver.timeouts.count == 1)
        #expect(harness.handler.statistics.stalledDeadlines == 1)
        // ...but a millisecond later.
        harness.clock.advance(by: .milliseconds(1))
        loop.advanceTime(by: .milliseconds(1))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(100), Instant.zero + .seconds(100) + .milliseconds(1)])
        #expect(harness.handler.statistics.stalledDeadlines == 2)
    }

    @Test func pastDeadlineFiresOnTheNextLoopTurn() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(50)])
        harness.channel.embeddedEventLoop.run()
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(100)])
    }

    /// A full send buffer (the channel not writable): what the driver queued is dropped and
    /// counted, never kept for later; reading goes on.
    @Test func outputIsDroppedWhileTheChannelIsNotWritable() throws {
        let harness = try Harness()
        harness.driver.asReplies = true
        harness.driver.replies = { received in
            [(received.source, Array("echo \(String(decoding: received.payload, as: UTF8.self))".utf8)), (S, Array("copy".utf8))]
        }
        harness.channel.isWritable = false
        #expect(!harness.channel.isWritable)
        let pipeline = harness.channel.pipeline.syncOperations
        pipeline.fireChannelRead(NIOAny(harness.envelope("a", from: v4("203.0.113.7", 40001))))
        pipeline.fireChannelRead(NIOAny(harness.envelope("b", from: v4("198.51.100.9", 50000))))
        pipeline.fireChannelReadComplete()
        // Both datagrams reached the driver; its 4 answers (2 replies, 2 sends) were dropped.
        #expect(harness.driver.received.map(\.source) == [A, B])
        #expect(harness.counter.writes == 0)
        #expect(harness.counter.flushes == 0)
        #expect(try harness.sent().isEmpty)
        #expect(harness.handler.statistics == TransportStatistics(datagramsReceived: 2, datagramsSent: 0, nonIPv4Dropped: 0, errors: 0,
                                                                 droppedUnwritable: 4))
        // perform(_:) too.
        harness.handler.perform { _, output, _ in output.send(Array("alice 10.0.0.5".utf8), to: S) }
        #expect(harness.handler.statistics.droppedUnwritable == 5)
        #expect(harness.counter.writes == 0)

        // Writable again: new output goes out; what was dropped is not sent late.
        harness.channel.isWritable = true
        try harness.channel.writeInbound(harness.envelope("c", from: v4("203.0.113.7", 40001)))
        let sent = try harness.sent()
        #expect(sent.map(\.0) == [A, S])
        #expect(sent.map(\.1) == ["echo c", "copy"])
        #expect(harness.counter.writes == 2)
        #expect(harness.counter.flushes == 1)
        #expect(harness.handler.statistics == TransportStatistics(datagramsReceived: 3, datagramsSent: 2, nonIPv4Dropped: 0, errors: 0,
                                                                 droppedUnwritable: 5))
    }

    @Test func nothingIsDroppedWhenThereIsNothingToSend() throws {
        let harness = try Harness()
        harness.channel.isWritable = false
        try harness.channel.writeInbound(harness.envelope("quiet", from: v4("203.0.113.7", 40001)))
        harness.handler.perform { _, _, _ in }
        #expect(harness.handler.statistics.droppedUnwritable == 0)
        #expect(harness.handler.statistics.datagramsReceived == 1)
    }

    @Test func timerOutputIsDroppedWhileNotWritableAndTheTimerKeepsRunning() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(105), Instant.zero + .seconds(115)])
        harness.driver.timeoutReplies = { now in [(S, Array("tick \(now.nanoseconds / 1_000_000_000)".utf8))] }
        let loop = harness.channel.embeddedEventLoop
        harness.channel.isWritable = false
        harness.clock.advance(by: .seconds(5))
        loop.advanceTime(by: .seconds(5))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(105)])
        #expect(harness.handler.statistics.droppedUnwritable == 1)
        #expect(try harness.sent().isEmpty)
        // Re-armed for the next deadline all the same.
        harness.channel.isWritable = true
        harness.clock.advance(by: .seconds(10))
        loop.advanceTime(by: .seconds(10))
        #expect(harness.driver.timeouts == [Instant.zero + .seconds(105), Instant.zero + .seconds(115)])
        #expect(try harness.sent().map(\.1) == ["tick 115"])
        #expect(harness.handler.statistics.droppedUnwritable == 1)
        #expect(harness.handler.statistics.datagramsSent == 1)
    }

    @Test func closingTheChannelCancelsTheTimer() throws {
        let harness = try Harness(deadlines: [Instant.zero + .seconds(101)])
        try harness.channel.close().wait()
        harness.clock.advance(by: .seconds(1))
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(harness.driver.timeouts == [])
    }
}
