import Logging
import MonotonicTime
import NIOCore
import Wire

/// Counters the transport keeps for the operator.
public struct TransportStatistics: Sendable, Hashable {
    public var datagramsReceived = 0
    public var datagramsSent = 0
    /// Datagrams from a non-IPv4 source, dropped.
    public var nonIPv4Dropped = 0
    /// Send or socket errors; each belongs to one destination and never closes the socket.
    public var errors = 0
    /// Datagrams dropped because the socket's send buffer was full (never queued without bound).
    public var droppedUnwritable = 0
}

/// The thin channel handler that feeds a ``DatagramDriver`` from a UDP channel: it
/// converts addresses, hands each datagram to the driver, writes what the driver queued
/// once per read batch, and keeps one timer armed for the driver's next deadline.
public final class DatagramDriverHandler<Driver: DatagramDriver>: ChannelInboundHandler {
    public typealias InboundIn = AddressedEnvelope<ByteBuffer>
    public typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    public let driver: Driver
    // `output` and `statistics` are touched per datagram, only on the channel's event loop and
    // never re-entrantly (a driver holds no reference to its handler), so the runtime's
    // exclusivity check on these two class properties buys nothing and costs a few percent of
    // the server's CPU under STUN load; see docs/performance.md.
    @exclusivity(unchecked) public private(set) var statistics = TransportStatistics()
    private let clock: any InstantSource
    private let logger: Logger
    @exclusivity(unchecked) private var output: DatagramOutput
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var timerDeadline: Instant?

    public init(driver: Driver, clock: any InstantSource = SystemClock(), logger: Logger = Logger(label: "natchat.transport")) {
        self.driver = driver
        self.clock = clock
        self.logger = logger
        self.output = DatagramOutput()
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        output = DatagramOutput(allocator: context.channel.allocator)
        if context.channel.isActive { armTimer() }
    }

    public func channelActive(context: ChannelHandlerContext) {
        armTimer()
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        statistics.datagramsReceived += 1
        guard let source = Endpoint(envelope.remoteAddress) else {
            statistics.nonIPv4Dropped += 1
            return
        }
        output.currentSource = (source, envelope.remoteAddress)
        driver.receive(envelope.data, from: source, now: clock.now(), output: &output)
        output.currentSource = nil
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        flush()
        context.fireChannelReadComplete()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A send error (ENETUNREACH towards a private address, ECONNREFUSED from an ICMP
        // port-unreachable) concerns one destination: count it and keep the socket open.
        statistics.errors += 1
        logger.debug("datagram error", metadata: ["error": "\(error)"])
    }

    /// Runs `body` against the driver (on the event loop), then sends what it queued.
    public func perform(_ body: (Driver, inout DatagramOutput, Instant) -> Void) {
        body(driver, &output, clock.now())
        flush()
    }

    private func flush() {
        guard let context else { return }
        if !output.isEmpty {
            guard context.channel.isWritable else {
                // The kernel is not taking datagrams (a send buffer full of packets waiting for
                // unreachable neighbours): drop rather than queue in memory without bound.
                statistics.droppedUnwritable += output.replies.count + output.pending.count + output.arenaReplies.count
                output.removeAll()
                armTimer()
                return
            }
            for (address, start, length) in output.arenaReplies {
                guard let payload = output.arena.getSlice(at: start, length: length) else { continue }
                context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: address, data: payload)), promise: nil)
            }
            for (address, payload) in output.replies {
                context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: address, data: payload)), promise: nil)
            }
            for (destination, payload) in output.pending {
                let envelope = AddressedEnvelope(remoteAddress: output.socketAddress(for: destination), data: payload)
                context.write(wrapOutboundOut(envelope), promise: nil)
            }
            statistics.datagramsSent += output.replies.count + output.pending.count + output.arenaReplies.count
            context.flush()
            // After the flush the kernel normally has every datagram and the arena's storage
            // is ours alone again, so clearing it keeps it; if a write is still queued, the
            // next reply starts a fresh arena.
            output.removeAll()
        }
        armTimer()
    }

    private func armTimer() {
        guard let context else { return }
        let wanted = driver.nextDeadline()
        if wanted == timerDeadline, timer != nil { return }
        timer?.cancel()
        timer = nil
        timerDeadline = wanted
        guard let wanted else { return }
        let delay = max(0, (wanted - clock.now()).nanosecondsClamped)
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(delay)) {
            let handler = loopBoundSelf.value
            handler.timer = nil
            handler.timerDeadline = nil
            handler.driver.timeout(now: handler.clock.now(), output: &handler.output)
            handler.flush()
        }
    }
}
