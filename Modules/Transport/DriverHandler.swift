import Addressing
import Logging
import MonotonicTime
import NIOCore

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
    /// Timeouts after which the driver's next deadline was still not later than the instant
    /// just handled (a core that forgot to move its deadline). The timer then waits
    /// 1 ms instead of firing again at once: a bug in a core
    /// costs a counter and a slow timer, never a spinning event loop.
    public var stalledDeadlines = 0

    /// The counters given (all zero by default: a host that has handled nothing), for tests
    /// and snapshots built by hand.
    public init(datagramsReceived: Int = 0, datagramsSent: Int = 0, nonIPv4Dropped: Int = 0, errors: Int = 0,
                droppedUnwritable: Int = 0, stalledDeadlines: Int = 0) {
        self.datagramsReceived = datagramsReceived
        self.datagramsSent = datagramsSent
        self.nonIPv4Dropped = nonIPv4Dropped
        self.errors = errors
        self.droppedUnwritable = droppedUnwritable
        self.stalledDeadlines = stalledDeadlines
    }
}

/// Opens the extra sockets a driver asks for (``DatagramOutput/openSocket(_:)``). Transport
/// knows only NIOCore; TransportPosix gives the one that binds NIO datagram channels.
public protocol ExtraSocketOpener: Sendable {
    /// Binds a UDP socket on `host` with an ephemeral port, on `eventLoop` (the main socket's,
    /// so one driver never sees two threads), running `initializer` on its channel first.
    func openSocket(host: String, on eventLoop: any EventLoop,
                    initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<any Channel>
}

/// The thin channel handler that feeds a ``DatagramDriver`` from a UDP channel: it
/// converts addresses, hands each datagram to the driver, writes what the driver queued
/// once per read batch, and keeps one timer armed for the driver's next deadline.
public final class DatagramDriverHandler<Driver: DatagramDriver>: ChannelInboundHandler {
    public typealias InboundIn = AddressedEnvelope<ByteBuffer>
    public typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    public let driver: Driver
    private let pump: DatagramPump

    /// `extraSockets` opens the sockets the driver asks for besides this one (`nil`: such
    /// requests are ignored and datagrams for them dropped).
    public init(driver: Driver, clock: any InstantSource = SystemClock(), logger: Logger = Logger(label: "natchat.transport"),
                extraSockets: (any ExtraSocketOpener)? = nil) {
        self.driver = driver
        self.pump = DatagramPump(driver: driver, clock: clock, logger: logger, opener: extraSockets)
    }

    /// The transport's counters.
    public var statistics: TransportStatistics { pump.statistics }

    public func handlerAdded(context: ChannelHandlerContext) { pump.attach(context) }

    public func channelActive(context: ChannelHandlerContext) {
        pump.armTimer()
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) { pump.detach() }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) { pump.read(data) }

    public func channelReadComplete(context: ChannelHandlerContext) {
        pump.flush()
        context.fireChannelReadComplete()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) { pump.count(error) }

    /// Runs `body` against the driver (on the event loop), then sends what it queued.
    public func perform(_ body: (Driver, inout DatagramOutput, Instant) -> Void) {
        let driver = self.driver
        pump.perform { output, now in body(driver, &output, now) }
    }
}

/// The handler's work, written against `any DatagramDriver` rather than generic over it:
/// a generic class instantiated from another module runs unspecialised, which cost dynamic
/// casts, metadata look-ups and value-witness calls on every datagram (perf under STUN load).
/// It is a channel handler only for NIO's typed wrapping; the pipeline holds the generic one.
final class DatagramPump: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let driver: any DatagramDriver
    // `output` and `statistics` are touched per datagram, only on the channel's event loop and
    // never re-entrantly (a driver holds no reference to its handler), so the runtime's
    // exclusivity check on these two class properties buys nothing and costs a few percent of
    // the server's CPU under STUN load; see docs/performance.md.
    @exclusivity(unchecked) private(set) var statistics = TransportStatistics()
    @exclusivity(unchecked) private var output: DatagramOutput
    private let clock: any InstantSource
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var timerDeadline: Instant?
    /// The instant the last timeout was handled at.
    private var lastTimeout: Instant?
    /// The driver's extra sockets (``DatagramOutput/openSocket(_:)``), by its numbers.
    private var extraSockets: [Int: ExtraSocket] = [:]
    private let opener: (any ExtraSocketOpener)?

    enum ExtraSocket {
        /// Binding; datagrams sent meanwhile wait here (a few).
        case opening([AddressedEnvelope<ByteBuffer>])
        case open(any Channel)
    }

    /// Datagrams that wait for an extra socket to be bound, at most.
    static var extraSocketBacklog: Int { 8 }

    init(driver: any DatagramDriver, clock: any InstantSource, logger: Logger, opener: (any ExtraSocketOpener)? = nil) {
        self.driver = driver
        self.clock = clock
        self.logger = logger
        self.opener = opener
        self.output = DatagramOutput()
    }

    func attach(_ context: ChannelHandlerContext) {
        self.context = context
        output = DatagramOutput(allocator: context.channel.allocator)
        if context.channel.isActive { armTimer() }
    }

    func detach() {
        timer?.cancel()
        timer = nil
        context = nil
        for case .open(let channel) in extraSockets.values { channel.close(promise: nil) }
        extraSockets.removeAll()
    }

    func read(_ data: NIOAny) {
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

    /// A datagram on extra socket `socket`.
    func readExtra(_ socket: Int, _ envelope: AddressedEnvelope<ByteBuffer>) {
        statistics.datagramsReceived += 1
        guard let source = Endpoint(envelope.remoteAddress) else {
            statistics.nonIPv4Dropped += 1
            return
        }
        driver.receive(envelope.data, from: source, onSocket: socket, now: clock.now(), output: &output)
    }

    func count(_ error: any Error) {
        // A send error (ENETUNREACH towards a private address, ECONNREFUSED from an ICMP
        // port-unreachable) concerns one destination: count it and keep the socket open.
        statistics.errors += 1
        logger.debug("datagram error", metadata: ["error": "\(error)"])
    }

    func perform(_ body: (inout DatagramOutput, Instant) -> Void) {
        body(&output, clock.now())
        flush()
    }

    func flush() {
        guard let context else { return }
        if !output.isEmpty {
            if !output.socketCommands.isEmpty || !output.socketSends.isEmpty { serviceExtraSockets(context) }
            guard context.channel.isWritable else {
                // The kernel is not taking datagrams (a send buffer full of packets waiting for
                // unreachable neighbours): drop rather than queue in memory without bound.
                statistics.droppedUnwritable += output.count
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
            statistics.datagramsSent += output.count
            context.flush()
            // After the flush the kernel normally has every datagram and the arena's storage
            // is ours alone again, so clearing it keeps it; if a write is still queued, the
            // next reply starts a fresh arena.
            output.removeAll()
        }
        armTimer()
    }

    /// Opens and closes the extra sockets the driver asked for, in order, then sends what it
    /// queued for them; leaves the output's extra-socket queues empty.
    private func serviceExtraSockets(_ context: ChannelHandlerContext) {
        for command in output.socketCommands {
            switch command {
            case .open(let socket): openExtra(socket, context: context)
            case .close(let socket):
                if case .open(let channel) = extraSockets.removeValue(forKey: socket) { channel.close(promise: nil) }
            }
        }
        for (socket, destination, payload) in output.socketSends {
            let envelope = AddressedEnvelope(remoteAddress: output.socketAddress(for: destination), data: payload)
            switch extraSockets[socket] {
            case .open(let channel):
                channel.writeAndFlush(envelope, promise: nil)
                statistics.datagramsSent += 1
            case .opening(var backlog):
                guard backlog.count < Self.extraSocketBacklog else {
                    statistics.droppedUnwritable += 1
                    continue
                }
                backlog.append(envelope)
                extraSockets[socket] = .opening(backlog)
            case nil:
                statistics.errors += 1
            }
        }
        output.socketCommands.removeAll()
        output.socketSends.removeAll()
    }

    private func openExtra(_ socket: Int, context: ChannelHandlerContext) {
        guard extraSockets[socket] == nil, let opener else { return }
        extraSockets[socket] = .opening([])
        let host = context.channel.localAddress?.ipAddress ?? "0.0.0.0"
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        opener.openSocket(host: host, on: context.eventLoop) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ExtraSocketHandler(pump: bound, socket: socket))
            }
        }.hop(to: context.eventLoop).whenComplete { result in
            bound.value.extraSocketSettled(socket, result)
        }
    }

    private func extraSocketSettled(_ socket: Int, _ result: Result<any Channel, any Error>) {
        switch result {
        case .success(let channel):
            // Closed (or the host detached) while binding: not wanted any more.
            guard context != nil, case .opening(let backlog) = extraSockets[socket] else {
                channel.close(promise: nil)
                return
            }
            extraSockets[socket] = .open(channel)
            for envelope in backlog { channel.write(envelope, promise: nil) }
            if !backlog.isEmpty { channel.flush() }
            statistics.datagramsSent += backlog.count
        case .failure(let error):
            if case .opening(let backlog) = extraSockets[socket] {
                extraSockets[socket] = nil
                statistics.droppedUnwritable += backlog.count
            }
            statistics.errors += 1
            logger.debug("cannot open an extra socket", metadata: ["socket": "\(socket)", "error": "\(error)"])
        }
    }

    /// The least wait after a timeout that left the driver's deadline where it was.
    static let stalledDeadlineDelay: Int64 = 1_000_000

    func armTimer() {
        guard let context else { return }
        let wanted = driver.nextDeadline()
        if wanted == timerDeadline, timer != nil { return }
        timer?.cancel()
        timer = nil
        timerDeadline = wanted
        guard let wanted else { return }
        var delay = max(0, (wanted - clock.now()).nanosecondsClamped)
        if let handled = lastTimeout, wanted <= handled {
            statistics.stalledDeadlines += 1
            if statistics.stalledDeadlines == 1 {
                logger.warning("the driver's next deadline did not move past a timeout it handled; waiting 1 ms between timeouts")
            }
            delay = max(delay, Self.stalledDeadlineDelay)
        }
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(delay)) {
            let pump = loopBoundSelf.value
            pump.timer = nil
            pump.timerDeadline = nil
            let now = pump.clock.now()
            pump.lastTimeout = now
            pump.driver.timeout(now: now, output: &pump.output)
            pump.flush()
        }
    }
}

/// Feeds the datagrams of one extra socket to its host's pump (same event loop).
final class ExtraSocketHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let pump: NIOLoopBound<DatagramPump>
    private let socket: Int

    init(pump: NIOLoopBound<DatagramPump>, socket: Int) {
        self.pump = pump
        self.socket = socket
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pump.value.readExtra(socket, unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        pump.value.flush()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        pump.value.count(error)
    }
}
