#if canImport(Glibc)
import Glibc
#endif
import Addressing
import CBatchIO
import Identity
import STUN
import Wire

/// One kind of closed-loop traffic: how to write the next request and how to recognise a
/// reply. Requests are written straight into the send batch's memory and replies are read
/// in place, so the generator allocates nothing per datagram.
protocol ClosedLoopTraffic {
    /// Writes the next request into the slot that `slot(socket)` returns for the local socket
    /// it is to leave from; returns that socket's index and the request's length.
    mutating func writeNextRequest(_ slot: (Int) -> UnsafeMutableRawBufferPointer) -> (socket: Int, length: Int)
    /// The local socket on which the reply to a request sent from `socket` arrives.
    func replySocket(forRequestFrom socket: Int) -> Int
    /// Whether `datagram`, received on local socket `socket`, answers one of the requests.
    mutating func isReply(_ datagram: UnsafeRawBufferPointer, on socket: Int) -> Bool
}

extension ClosedLoopTraffic {
    func replySocket(forRequestFrom socket: Int) -> Int { socket }
}

/// Keeps `window` requests outstanding against one server from many local sockets: requests
/// leave in `sendmmsg` batches, replies arrive in `recvmmsg` batches. A window that gets no
/// reply for 100 ms counts as lost and is refilled.
///
/// The first `presign` requests are written (and signed) before the clock starts and only
/// copied during the run: on a 2-core machine the generator shares the CPU with the server,
/// and an HMAC per request would make the generator, not the server, the thing measured.
struct ClosedLoop {
    static let slotSize = 2048
    static let batch = Int(NATCHAT_BATCH_MAX)

    let fds: [Int32]
    let server: Endpoint
    let window: Int
    let presign: Int

    func run<Traffic: ClosedLoopTraffic>(_ traffic: inout Traffic, duration: Double, registered: Int) -> Summary {
        let prepared = PreparedRequests(count: presign, from: &traffic)
        var cursor = 0
        let sockets = fds.count
        let sendMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: sockets * Self.batch * Self.slotSize, alignment: 16)
        let receiveMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.batch * Self.slotSize, alignment: 16)
        defer {
            sendMemory.deallocate()
            receiveMemory.deallocate()
        }
        var lengths = [UInt32](repeating: 0, count: sockets * Self.batch)
        var receivedLengths = [UInt32](repeating: 0, count: Self.batch)
        var queued = [Int](repeating: 0, count: sockets)
        // Send times per reply socket, oldest first (replies on one socket come back in order).
        var sendTimes = [TimeRing](repeating: TimeRing(capacity: window), count: sockets)
        var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        var latencies: [Double] = []
        latencies.reserveCapacity(1_000_000)
        var outstanding = 0, sent = 0, completed = 0

        func slot(_ socket: Int, _ index: Int) -> UnsafeMutableRawBufferPointer {
            let start = (socket * Self.batch + index) * Self.slotSize
            return UnsafeMutableRawBufferPointer(rebasing: sendMemory[start..<(start + Self.slotSize)])
        }
        func flush(_ socket: Int) {
            var done = 0, attempts = 0
            while done < queued[socket], attempts < 100 {
                attempts += 1
                let base = sendMemory.baseAddress.map { $0 + (socket * Self.batch + done) * Self.slotSize }
                let count = lengths.withUnsafeBufferPointer { all in
                    natchat_batch_send(fds[socket], server.address.bits, server.port, base?.assumingMemoryBound(to: UInt8.self),
                                       all.baseAddress.map { $0 + socket * Self.batch + done }, UInt32(Self.slotSize),
                                       UInt32(queued[socket] - done))
                }
                if count > 0 { done += Int(count) } else if errno != EAGAIN && errno != EINTR { break }
            }
            queued[socket] = 0 // anything the kernel refused is lost and found so by the window timeout
        }

        let start = monotonicMicros(), end = start + duration * 1e6
        var sending = true
        while true {
            // After the duration, stop sending and collect what is still in flight (until it
            // has all come back or nothing has for 100 ms), so the last window is not "loss".
            sending = sending && monotonicMicros() < end
            if !sending && outstanding == 0 { break }
            let now = monotonicMicros()
            while sending, outstanding < window {
                let socket: Int, length: Int
                if cursor < prepared.count {
                    socket = prepared.sockets[cursor]
                    if queued[socket] == Self.batch { flush(socket) }
                    length = prepared.copy(cursor, into: slot(socket, queued[socket]))
                    cursor += 1
                } else {
                    var chosen = 0
                    (socket, length) = traffic.writeNextRequest { socket in
                        chosen = socket
                        if queued[socket] == Self.batch { flush(socket) }
                        return slot(socket, queued[socket])
                    }
                    precondition(socket == chosen, "a request is written into its own socket's slot")
                }
                lengths[socket * Self.batch + queued[socket]] = UInt32(length)
                queued[socket] += 1
                sendTimes[traffic.replySocket(forRequestFrom: socket)].push(now)
                outstanding += 1
                sent += 1
            }
            for socket in 0..<sockets where queued[socket] > 0 { flush(socket) }

            for index in polls.indices { polls[index].revents = 0 }
            guard poll(&polls, nfds_t(polls.count), 100) > 0 else {
                if !sending { break }
                outstanding = 0 // the window was lost: start afresh
                for index in sendTimes.indices { sendTimes[index].removeAll() }
                continue
            }
            for socket in 0..<sockets where polls[socket].revents & Int16(POLLIN) != 0 {
                for _ in 0..<16 {
                    let count = receivedLengths.withUnsafeMutableBufferPointer { lengths in
                        natchat_batch_receive(fds[socket], receiveMemory.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                              lengths.baseAddress, UInt32(Self.slotSize), UInt32(Self.batch))
                    }
                    guard count > 0 else { break }
                    let arrived = monotonicMicros()
                    for index in 0..<Int(count) {
                        let start = index * Self.slotSize
                        let datagram = UnsafeRawBufferPointer(rebasing: receiveMemory[start..<(start + Int(receivedLengths[index]))])
                        guard traffic.isReply(datagram, on: socket) else { continue }
                        completed += 1
                        outstanding = max(0, outstanding - 1)
                        if let sentAt = sendTimes[socket].pop(), latencies.count < 1_000_000 { latencies.append(arrived - sentAt) }
                    }
                    if Int(count) < Self.batch { break }
                }
            }
        }
        return Summary(completed: completed, sent: sent, seconds: (monotonicMicros() - start) / 1e6, latencies: latencies,
                       registered: registered)
    }
}

/// Requests written before a run: their bytes one after another, with lengths and sockets.
struct PreparedRequests {
    private(set) var bytes: [UInt8] = []
    private(set) var offsets: [Int] = [0]
    private(set) var sockets: [Int] = []
    var count: Int { sockets.count }

    init<Traffic: ClosedLoopTraffic>(count: Int, from traffic: inout Traffic) {
        guard count > 0 else { return }
        sockets.reserveCapacity(count)
        offsets.reserveCapacity(count + 1)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: ClosedLoop.slotSize, alignment: 16)
        defer { scratch.deallocate() }
        for _ in 0..<count {
            let (socket, length) = traffic.writeNextRequest { _ in scratch }
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[..<length]))
            offsets.append(bytes.count)
            sockets.append(socket)
        }
    }

    /// Copies request `index` into `slot`; returns its length.
    func copy(_ index: Int, into slot: UnsafeMutableRawBufferPointer) -> Int {
        let range = offsets[index]..<offsets[index + 1]
        bytes.withUnsafeBytes { slot.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[range])) }
        return range.count
    }
}

/// A fixed-capacity FIFO of send times; when full, the oldest is dropped.
struct TimeRing {
    private var times: [Double]
    private var head = 0
    private var count = 0

    init(capacity: Int) { times = [Double](repeating: 0, count: max(1, capacity)) }

    mutating func push(_ time: Double) {
        if count == times.count { head = (head + 1) % times.count; count -= 1 }
        times[(head + count) % times.count] = time
        count += 1
    }

    mutating func pop() -> Double? {
        guard count > 0 else { return nil }
        defer { head = (head + 1) % times.count; count -= 1 }
        return times[head]
    }

    mutating func removeAll() { head = 0; count = 0 }
}

// MARK: the traffic of each mode

/// STUN Binding requests round-robin over the sockets; a reply counts when it is a Binding
/// success for a transaction of this run whose XOR-MAPPED-ADDRESS is the socket's own address.
struct STUNTraffic: ClosedLoopTraffic {
    let localEndpoints: [Endpoint]
    let runTag = UInt32.random(in: 1...UInt32.max)
    var next: UInt64 = 0

    mutating func writeNextRequest(_ slot: (Int) -> UnsafeMutableRawBufferPointer) -> (socket: Int, length: Int) {
        let socket = Int(next % UInt64(localEndpoints.count))
        let bytes = slot(socket)
        guard let base = bytes.baseAddress else { return (socket, 0) }
        base.storeBytes(of: UInt32(0x0001_0000).bigEndian, toByteOffset: 0, as: UInt32.self) // Binding request, no attributes
        base.storeBytes(of: STUN.magicCookie.bigEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: runTag.bigEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: next.bigEndian, toByteOffset: 12, as: UInt64.self)
        next += 1
        return (socket, STUN.headerLength)
    }

    mutating func isReply(_ datagram: UnsafeRawBufferPointer, on socket: Int) -> Bool {
        guard datagram.count == STUN.bindingSuccessLength,
              UInt32(bigEndian: datagram.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == 0x0101_000C,
              UInt32(bigEndian: datagram.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) == runTag,
              UInt64(bigEndian: datagram.loadUnaligned(fromByteOffset: 12, as: UInt64.self)) < next,
              UInt32(bigEndian: datagram.loadUnaligned(fromByteOffset: 20, as: UInt32.self)) == 0x0020_0008 // XOR-MAPPED-ADDRESS
        else { return false }
        let port = UInt16(bigEndian: datagram.loadUnaligned(fromByteOffset: 26, as: UInt16.self)) ^ UInt16(STUN.magicCookie >> 16)
        let address = UInt32(bigEndian: datagram.loadUnaligned(fromByteOffset: 28, as: UInt32.self)) ^ STUN.magicCookie
        return port == localEndpoints[socket].port && address == localEndpoints[socket].address.bits
    }
}

/// Authenticated keep-alives from every registered client in turn, each with a fresh counter
/// and tag written into a copy of the client's encoded keep-alive.
struct KeepAliveTraffic: ClosedLoopTraffic {
    let sockets: [Int]             // per client: its local socket
    let macs: [SessionMAC]         // per client: its session key
    let templates: [UInt8]         // every client's encoded keep-alive, one after another
    let offsets: [Int]             // per client: where its template starts (plus one end offset)
    let localEndpoints: [Endpoint] // per socket: what the server sees, which the ack echoes
    var counters: [UInt64]
    var next = 0

    init(clients: [SimClient], localEndpoints: [Endpoint]) {
        var templates: [UInt8] = [], offsets: [Int] = []
        for client in clients {
            offsets.append(templates.count)
            templates += ExtendedDatagram(.keepAlive(id: client.id, natKind: .none), trailer: .session(counter: 0, tag: .zero)).encode()
        }
        offsets.append(templates.count)
        self.templates = templates
        self.offsets = offsets
        sockets = clients.map(\.socket)
        macs = clients.map { ($0.sessionKey ?? KeyBytes([])).mac }
        counters = clients.map(\.counter)
        self.localEndpoints = localEndpoints
    }

    mutating func writeNextRequest(_ slot: (Int) -> UnsafeMutableRawBufferPointer) -> (socket: Int, length: Int) {
        let client = next % sockets.count
        next += 1
        counters[client] += 1
        let bytes = slot(sockets[client])
        let length = offsets[client + 1] - offsets[client]
        templates.withUnsafeBytes { all in
            bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[offsets[client]..<offsets[client + 1]]))
        }
        signInPlace(UnsafeMutableRawBufferPointer(rebasing: bytes[..<length]), counter: counters[client], mac: macs[client])
        return (sockets[client], length)
    }

    mutating func isReply(_ datagram: UnsafeRawBufferPointer, on socket: Int) -> Bool {
        datagram.count == ExtendedMessage.keepAliveAckLength && datagram[0] == ExtendedMessage.magic
            && datagram[2] == ExtendedMessage.keepAliveAckKind
            && UInt32(bigEndian: datagram.loadUnaligned(fromByteOffset: 3, as: UInt32.self)) == localEndpoints[socket].address.bits
            && UInt16(bigEndian: datagram.loadUnaligned(fromByteOffset: 7, as: UInt16.self)) == localEndpoints[socket].port
    }
}

/// Relay requests from client 0 (socket 0) to client 1 (socket 1), or, as the yardstick, the
/// same datagrams sent to an echo server and counted when they come back (`echo`).
struct RelayTraffic: ClosedLoopTraffic {
    let template: [UInt8]
    let mac: SessionMAC
    let fromSocket: Int
    let toSocket: Int
    let relayedLength: Int
    let relayedKind: UInt8
    let echo: Bool
    var counter: UInt64

    init(from: SimClient, to: SimClient, payload: [UInt8], echo: Bool) {
        template = ExtendedDatagram(.relay(id: from.id, to: to.id, payload: payload), trailer: .session(counter: 0, tag: .zero)).encode()
        mac = (from.sessionKey ?? KeyBytes([])).mac
        fromSocket = from.socket
        toSocket = echo ? from.socket : to.socket
        let relayed = ExtendedMessage.relayed(from: from.id, payload: payload).encode()
        relayedLength = relayed.count
        relayedKind = relayed[2]
        self.echo = echo
        counter = from.counter
    }

    mutating func writeNextRequest(_ slot: (Int) -> UnsafeMutableRawBufferPointer) -> (socket: Int, length: Int) {
        counter += 1
        let bytes = UnsafeMutableRawBufferPointer(rebasing: slot(fromSocket)[..<template.count])
        template.withUnsafeBytes { bytes.copyMemory(from: $0) }
        signInPlace(bytes, counter: counter, mac: mac)
        return (fromSocket, template.count)
    }

    func replySocket(forRequestFrom socket: Int) -> Int { toSocket }

    mutating func isReply(_ datagram: UnsafeRawBufferPointer, on socket: Int) -> Bool {
        guard socket == toSocket, datagram.count >= 3, datagram[0] == ExtendedMessage.magic else { return false }
        return echo ? datagram.count == template.count && datagram[2] == template[2]
            : datagram.count == relayedLength && datagram[2] == relayedKind
    }
}

/// Writes `counter` and the tag over everything before the tag into an encoded keep-alive or
/// relay request (both end in an 8-byte counter and a 16-byte tag).
func signInPlace(_ datagram: UnsafeMutableRawBufferPointer, counter: UInt64, mac: SessionMAC) {
    let tagOffset = datagram.count - 16
    datagram.storeBytes(of: counter.bigEndian, toByteOffset: tagOffset - 8, as: UInt64.self)
    let tag = mac.tag(UnsafeRawBufferPointer(rebasing: datagram[..<tagOffset]))
    datagram.storeBytes(of: tag.high.bigEndian, toByteOffset: tagOffset, as: UInt64.self)
    datagram.storeBytes(of: tag.low.bigEndian, toByteOffset: tagOffset + 8, as: UInt64.self)
}
