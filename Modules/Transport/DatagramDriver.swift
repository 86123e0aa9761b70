#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MonotonicTime
import NIOCore
import Wire

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
}

/// Datagrams a driver wants sent. The transport writes them all and flushes once.
public struct DatagramOutput {
    public let allocator: ByteBufferAllocator
    public internal(set) var pending: [(destination: Endpoint, payload: ByteBuffer)] = []
    /// The datagram being handled came from here: a reply reuses its socket address
    /// rather than building one (the server's hot path answers the sender).
    var currentSource: (endpoint: Endpoint, address: SocketAddress)?
    var replies: [(address: SocketAddress, payload: ByteBuffer)] = []

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.allocator = allocator
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
    public var isEmpty: Bool { pending.isEmpty && replies.isEmpty }
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
