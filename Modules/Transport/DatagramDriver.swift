#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Addressing
import MonotonicTime
import NIOCore

/// A sans-I/O protocol core as the transport sees it: datagrams and timeouts in,
/// datagrams out (through ``DatagramOutput``), and the next time it wants to be woken.
///
/// The transport calls every method on the channel's event loop, one at a time, so a
/// driver needs no locks. It never reads a clock: `now` is an argument.
public protocol DatagramDriver: AnyObject, SendableMetatype {
    /// A datagram arrived from `source`.
    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput)
    /// The deadline from ``nextDeadline()`` has passed.
    func timeout(now: Instant, output: inout DatagramOutput)
    /// When the driver next wants ``timeout(now:output:)``; `nil` for never.
    func nextDeadline() -> Instant?
    /// A datagram arrived from `source` on extra socket `socket` (one the driver opened with
    /// ``DatagramOutput/openSocket(_:)``). The default hands it to
    /// ``receive(_:from:now:output:)`` as if it came on the main socket.
    func receive(_ payload: ByteBuffer, from source: Endpoint, onSocket socket: Int, now: Instant, output: inout DatagramOutput)
}

extension DatagramDriver {
    public func receive(_ payload: ByteBuffer, from source: Endpoint, onSocket socket: Int, now: Instant,
                        output: inout DatagramOutput) {
        receive(payload, from: source, now: now, output: &output)
    }
}

/// What a driver asks of its extra sockets (see ``DatagramOutput/openSocket(_:)``).
public enum ExtraSocketCommand: Hashable, Sendable {
    case open(Int)
    case close(Int)
}

/// Datagrams a driver wants sent. The transport writes them all and flushes once.
public struct DatagramOutput {
    public let allocator: ByteBufferAllocator
    public internal(set) var pending: [(destination: Endpoint, payload: ByteBuffer)] = []
    /// The datagram being handled came from here: a reply reuses its socket address
    /// rather than building one (the server's hot path answers the sender).
    var currentSource: (endpoint: Endpoint, address: SocketAddress)?
    var replies: [(address: SocketAddress, payload: ByteBuffer)] = []
    /// Small replies to senders of the current read batch, written one after another into
    /// one buffer and cut into slices only when the batch is flushed (a slice shares the
    /// buffer's storage, so writing after slicing would copy it). Once the kernel has taken
    /// a batch the storage is ours alone again and is reused: a reply allocates nothing.
    var arena: ByteBuffer
    var arenaReplies: [(address: SocketAddress, start: Int, length: Int)] = []
    static var arenaCapacity: Int { 64 * 1024 }
    /// Extra sockets to open or close, in order (carried out after this output's datagrams).
    public internal(set) var socketCommands: [ExtraSocketCommand] = []
    /// Datagrams to send from extra sockets.
    public internal(set) var socketSends: [(socket: Int, destination: Endpoint, payload: ByteBuffer)] = []

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.allocator = allocator
        self.arena = allocator.buffer(capacity: 0)
    }

    /// Queues a datagram of at most `maxLength` bytes for `destination`, written by `body`
    /// straight into the output's own buffer: `body` gets at least `maxLength` writable bytes
    /// and returns how many it wrote (0 queues nothing). The server's STUN answers,
    /// keep-alive acknowledgements and relayed datagrams go this way. In steady state this
    /// allocates nothing (the sender's socket address is reused, other destinations'
    /// addresses are cached) and touches the buffer once. Outside a read batch (timers,
    /// `DatagramHost.perform(_:)` in TransportPosix, a test driving a core) the datagram
    /// gets a buffer of its own in ``pending``, like ``send(buffer:to:)``.
    public mutating func send(to destination: Endpoint, maxLength: Int,
                              writing body: (UnsafeMutableRawBufferPointer) -> Int) {
        guard currentSource != nil, maxLength <= Self.arenaCapacity else {
            var buffer = allocator.buffer(capacity: maxLength)
            guard Self.write(into: &buffer, maxLength: maxLength, body) > 0 else { return }
            pending.append((destination, buffer))
            return
        }
        let address = socketAddress(for: destination)
        if arena.capacity == 0 || arena.writableBytes < maxLength {
            if !arenaReplies.isEmpty {
                // This batch filled the arena: the rest get buffers of their own.
                var buffer = allocator.buffer(capacity: maxLength)
                guard Self.write(into: &buffer, maxLength: maxLength, body) > 0 else { return }
                replies.append((address, buffer))
                return
            }
            arena = allocator.buffer(capacity: Self.arenaCapacity)
        }
        let start = arena.writerIndex
        let written = Self.write(into: &arena, maxLength: maxLength, body)
        guard written > 0 else { return }
        arenaReplies.append((address, start, written))
    }

    private static func write(into buffer: inout ByteBuffer, maxLength: Int,
                              _ body: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: maxLength) { writable in
            min(max(0, body(UnsafeMutableRawBufferPointer(rebasing: writable[..<maxLength]))), maxLength)
        }
    }

    /// The socket address of `endpoint`: the current sender's as NIO delivered it, or one
    /// from a small cache (building one allocates).
    mutating func socketAddress(for endpoint: Endpoint) -> SocketAddress {
        if let source = currentSource, source.endpoint == endpoint { return source.address }
        if let cached = addressCache[endpoint] { return cached }
        if addressCache.count >= Self.addressCacheLimit { addressCache.removeAll(keepingCapacity: true) }
        let address = endpoint.socketAddress
        addressCache[endpoint] = address
        return address
    }

    var addressCache: [Endpoint: SocketAddress] = [:]
    static var addressCacheLimit: Int { 4096 }

    /// Runs `body` as the transport runs a driver for one received datagram: replies to
    /// `endpoint` reuse `address`, and ``send(to:maxLength:writing:)`` writes into the batch
    /// buffer. For harnesses that drive a core the way the transport does (the benchmarks);
    /// call ``removeAll()`` afterwards, as the transport does after each flush.
    public mutating func handling(datagramFrom endpoint: Endpoint, address: SocketAddress, _ body: (inout DatagramOutput) -> Void) {
        currentSource = (endpoint, address)
        body(&self)
        currentSource = nil
    }

    /// How many datagrams are queued.
    public var count: Int { pending.count + replies.count + arenaReplies.count + socketSends.count }

    /// Asks the transport for an extra UDP socket named `socket` (any number the driver
    /// chooses; opening one already open does nothing): bound to the main socket's address
    /// with an ephemeral port, on the same event loop, its datagrams handed in by
    /// ``DatagramDriver/receive(_:from:onSocket:now:output:)``. Binding takes a moment:
    /// datagrams sent from it meanwhile wait (a few). A socket that cannot be opened (no
    /// descriptors left) is counted as an error and its datagrams are dropped. The main
    /// socket's handling is untouched by any of this. Used for port probing (the chat client
    /// opens up to a few hundred for a while); a transport without an opener ignores it.
    public mutating func openSocket(_ socket: Int) {
        socketCommands.append(.open(socket))
    }

    /// Closes extra socket `socket` (nothing if it is not open).
    public mutating func closeSocket(_ socket: Int) {
        socketCommands.append(.close(socket))
    }

    /// Queues `bytes` for `destination`, sent from extra socket `socket` (dropped if it is
    /// not open or opening).
    public mutating func send(_ bytes: some Collection<UInt8>, to destination: Endpoint, fromSocket socket: Int) {
        var buffer = allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        socketSends.append((socket, destination, buffer))
    }

    /// Queues a prepared buffer for the sender of the datagram being handled.
    public mutating func reply(buffer: ByteBuffer, to destination: Endpoint) {
        if let source = currentSource, source.endpoint == destination {
            replies.append((source.address, buffer))
        } else {
            pending.append((destination, buffer))
        }
    }

    /// Queues `bytes` for `destination`.
    public mutating func send(_ bytes: some Collection<UInt8>, to destination: Endpoint) {
        var buffer = allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        pending.append((destination, buffer))
    }

    /// Queues a prepared buffer for `destination`.
    public mutating func send(buffer: ByteBuffer, to destination: Endpoint) {
        pending.append((destination, buffer))
    }

    /// Takes the queued datagrams, leaving the output empty.
    public mutating func drain() -> [(destination: Endpoint, payload: ByteBuffer)] {
        defer { pending.removeAll(keepingCapacity: true) }
        return pending
    }

    /// Whether anything is queued.
    public var isEmpty: Bool {
        pending.isEmpty && replies.isEmpty && arenaReplies.isEmpty && socketSends.isEmpty && socketCommands.isEmpty
    }

    /// Forgets everything queued, keeping the storage (for callers that drive a core
    /// without a transport, such as benchmarks).
    public mutating func removeAll() {
        pending.removeAll(keepingCapacity: true)
        replies.removeAll(keepingCapacity: true)
        arenaReplies.removeAll(keepingCapacity: true)
        arena.clear()
        if !socketSends.isEmpty { socketSends.removeAll() }
        if !socketCommands.isEmpty { socketCommands.removeAll() }
    }
}

extension Endpoint {
    /// The endpoint of an IPv4 socket address; `nil` for anything else.
    public init?(_ address: SocketAddress) {
        guard case .v4(let v4) = address, let port = address.port, let port16 = UInt16(exactly: port) else { return nil }
        self.init(address: IPv4Address(bits: UInt32(bigEndian: v4.address.sin_addr.s_addr)), port: port16)
    }

    /// This endpoint as a NIO socket address.
    public var socketAddress: SocketAddress {
        var raw = sockaddr_in()
        raw.sin_family = sa_family_t(AF_INET)
        raw.sin_port = port.bigEndian
        raw.sin_addr.s_addr = address.bits.bigEndian
        return SocketAddress(raw, host: "")
    }
}
