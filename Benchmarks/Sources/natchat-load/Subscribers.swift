#if canImport(Glibc)
import Addressing
import Glibc
#endif
import CBatchIO
import Identity
import Wire

/// Clients that registered with `subscribe: true` and do what a chat shell's roster does on
/// the wire, as cheaply as the generator can: every roster delta is acknowledged (a
/// `rosterAck` with the largest sequence seen and the bitmap of the 64 before it, counter and
/// tag under the subscriber's session key, written in place), and a keep-alive goes out every
/// 10 s. Deltas are read in `recvmmsg` batches and only their header is looked at (sequence
/// and record count); the acknowledgements of one batch leave in one `sendmmsg`.
///
/// Each subscriber has a socket of its own: a roster delta does not name its addressee, so
/// the socket is what tells whose it is. The sockets are bound to 127.1.x.y, apart from the
/// generator's.
struct SubscriberPool {
    struct Subscriber {
        var id: ClientID
        var mac: SessionMAC
        var counter: UInt64 = 0
        var largest: UInt32 = 0
        var received: UInt64 = 0
        var nextKeepAlive: Double = 0
        /// This subscriber's encoded rosterAck and keep-alive (counter and tag rewritten per use).
        var ackTemplate: [UInt8]
        var keepAliveTemplate: [UInt8]
    }

    static let slotSize = 2048
    static let batch = Int(NATCHAT_BATCH_MAX)
    /// The kind byte of a roster delta, and where its sequence and record count are.
    static let rosterKind: UInt8 = ExtendedMessage.roster(RosterDelta(epoch: 0, sequence: 0, version: 0, registered: 0, scope: .complete,
                                                                      synced: false, records: [])).encode()[2]
    static let sequenceOffset = 7
    static let recordCountOffset = 25
    static let headerLength = 26

    let server: Endpoint
    private(set) var fds: [Int32] = []
    private(set) var subscribers: [Subscriber] = []
    /// Counted since ``resetCounts()``.
    private(set) var datagrams = 0
    private(set) var records = 0
    private(set) var acks = 0
    private(set) var keepAlives = 0
    private let receiveMemory: UnsafeMutableRawBufferPointer
    private let sendMemory: UnsafeMutableRawBufferPointer
    private var receivedLengths = [UInt32](repeating: 0, count: batch)
    private var sendLengths = [UInt32](repeating: 0, count: batch)

    init(server: Endpoint, count: Int) throws {
        self.server = server
        receiveMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.batch * Self.slotSize, alignment: 16)
        sendMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.batch * Self.slotSize, alignment: 16)
        for index in 0..<count {
            fds.append(try openSocket(address: IPv4Address(127, 1, UInt8(index / 250), UInt8(2 + index % 250))).fd)
        }
    }

    /// Adopts the subscribers registered on ``fds`` (one per socket, in order).
    mutating func adopt(ids: [ClientID], keys: [KeyBytes?]) {
        for (id, key) in zip(ids, keys) {
            guard let key else { continue }
            let ack = ExtendedDatagram(.rosterAck(id: id, largest: 0, received: 0), trailer: .session(counter: 0, tag: .zero)).encode()
            let keepAlive = ExtendedDatagram(.keepAlive(id: id, natKind: .none), trailer: .session(counter: 0, tag: .zero)).encode()
            subscribers.append(Subscriber(id: id, mac: key.mac, nextKeepAlive: monotonicMicros() + 10e6,
                                          ackTemplate: ack, keepAliveTemplate: keepAlive))
        }
    }

    var registered: Int { subscribers.count }

    mutating func resetCounts() {
        datagrams = 0
        records = 0
        acks = 0
        keepAlives = 0
    }

    /// Reads everything waiting on subscriber `index`'s socket, acknowledging each delta.
    mutating func drain(_ index: Int) {
        guard index < subscribers.count else { return }
        let fd = fds[index]
        for _ in 0..<64 {
            let count = receivedLengths.withUnsafeMutableBufferPointer { lengths in
                natchat_batch_receive(fd, receiveMemory.baseAddress?.assumingMemoryBound(to: UInt8.self), lengths.baseAddress,
                                      UInt32(Self.slotSize), UInt32(Self.batch))
            }
            guard count > 0 else { return }
            var queued = 0
            for datagram in 0..<Int(count) {
                let start = datagram * Self.slotSize
                let length = Int(receivedLengths[datagram])
                let bytes = UnsafeRawBufferPointer(rebasing: receiveMemory[start..<(start + length)])
                guard length >= Self.headerLength, bytes[0] == ExtendedMessage.magic, bytes[2] == Self.rosterKind else { continue }
                let sequence = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: Self.sequenceOffset, as: UInt32.self))
                datagrams += 1
                records += Int(bytes[Self.recordCountOffset])
                noteReceived(sequence, by: index)
                queued = writeAck(for: index, into: queued)
            }
            send(queued, on: fd)
            if Int(count) < Self.batch { return }
        }
    }

    /// A keep-alive from every subscriber now.
    mutating func keepAliveAll() {
        let now = monotonicMicros()
        for index in subscribers.indices { subscribers[index].nextKeepAlive = now }
        tick(now: now)
    }

    /// Sends the keep-alives that are due (each subscriber every 10 s).
    mutating func tick(now: Double = monotonicMicros()) {
        for index in subscribers.indices where now >= subscribers[index].nextKeepAlive {
            subscribers[index].nextKeepAlive = now + 10e6
            subscribers[index].counter += 1
            let template = subscribers[index].keepAliveTemplate
            let slot = UnsafeMutableRawBufferPointer(rebasing: sendMemory[..<template.count])
            template.withUnsafeBytes { slot.copyMemory(from: $0) }
            signInPlace(slot, counter: subscribers[index].counter, mac: subscribers[index].mac)
            sendLengths[0] = UInt32(template.count)
            send(1, on: fds[index])
            keepAlives += 1
        }
    }

    /// Waits up to `timeoutMillis` for roster datagrams and handles them (and due keep-alives).
    mutating func service(timeoutMillis: Int32) {
        tick()
        guard !subscribers.isEmpty else {
            if timeoutMillis > 0 { usleep(useconds_t(timeoutMillis) * 1000) }
            return
        }
        var polls = fds.prefix(subscribers.count).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&polls, nfds_t(polls.count), timeoutMillis) > 0 else { return }
        for (index, entry) in polls.enumerated() where entry.revents & Int16(POLLIN) != 0 { drain(index) }
    }

    /// The largest sequence seen and the 64 before it, as ``RosterReplica`` keeps them.
    private mutating func noteReceived(_ sequence: UInt32, by index: Int) {
        guard sequence != 0 else { return }
        let largest = subscribers[index].largest
        if sequence > largest {
            let shift = UInt64(sequence - largest)
            let bits = subscribers[index].received
            subscribers[index].received = largest == 0 || shift > 64 ? 0 : (shift == 64 ? 1 << 63 : bits << shift | 1 << (shift - 1))
            subscribers[index].largest = sequence
        } else if sequence < largest {
            let distance = UInt64(largest - sequence - 1)
            if distance < 64 { subscribers[index].received |= 1 << distance }
        }
    }

    /// Writes subscriber `index`'s acknowledgement into send slot `slot`; returns the next slot.
    private mutating func writeAck(for index: Int, into slot: Int) -> Int {
        subscribers[index].counter += 1
        let template = subscribers[index].ackTemplate
        let start = slot * Self.slotSize
        let bytes = UnsafeMutableRawBufferPointer(rebasing: sendMemory[start..<(start + template.count)])
        template.withUnsafeBytes { bytes.copyMemory(from: $0) }
        // After the kind and the ID: largest (4 bytes), received (8), then counter and tag.
        let offset = 4 + Int(template[3])
        bytes.storeBytes(of: subscribers[index].largest.bigEndian, toByteOffset: offset, as: UInt32.self)
        bytes.storeBytes(of: subscribers[index].received.bigEndian, toByteOffset: offset + 4, as: UInt64.self)
        signInPlace(bytes, counter: subscribers[index].counter, mac: subscribers[index].mac)
        sendLengths[slot] = UInt32(template.count)
        acks += 1
        return slot + 1
    }

    private mutating func send(_ count: Int, on fd: Int32) {
        var done = 0, attempts = 0
        while done < count, attempts < 100 {
            attempts += 1
            let base = sendMemory.baseAddress.map { $0 + done * Self.slotSize }
            let sent = sendLengths.withUnsafeBufferPointer { lengths in
                natchat_batch_send(fd, server.address.bits, server.port, base?.assumingMemoryBound(to: UInt8.self),
                                   lengths.baseAddress.map { $0 + done }, UInt32(Self.slotSize), UInt32(count - done))
            }
            if sent > 0 { done += Int(sent) } else if errno != EAGAIN && errno != EINTR { break }
        }
    }
}
