#if canImport(Glibc)
import Glibc
#endif
import Addressing
import ArgumentParser
import Crypto
import Identity
import STUN
import Wire

/// `natchat-load`: drives natchat-server with the real extended dialect from many loopback
/// endpoints and prints one summary line (rate, p50/p99 latency, loss, registered count).
@main
struct NatchatLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "natchat-load",
        abstract: "Load generator for natchat-server (loopback only).",
        discussion: """
            register   registers N extended clients (challenge, signed registration) and reports the rate
            keepalive  registers N clients, then sends authenticated keep-alives round-robin, closed loop
            relay      registers two clients and relays datagrams from one to the other, closed loop
            stun       sends STUN Binding requests, closed loop
            echo       sends relay-sized datagrams to an echo server (the relay's yardstick), closed loop

            The closed loops send in sendmmsg batches and receive in recvmmsg batches, writing and
            signing each request in place, so the generator costs far less per datagram than a server.
            """)

    enum Mode: String, ExpressibleByArgument, CaseIterable { case register, keepalive, relay, stun, echo }

    @Argument(help: "register | keepalive | relay | stun | echo") var mode: Mode
    @Option(help: "Server as HOST:PORT (loopback).") var server: String = "127.0.0.1:10080"
    @Option(help: "Number of clients.") var clients: Int = 1000
    @Option(help: "Seconds of load after set-up (1-60).") var duration: Double = 5
    @Option(help: "Keep the clients registered and alive this many seconds afterwards (memory can be read meanwhile).") var hold: Double = 0
    @Option(help: "Requests outstanding at once.") var window: Int = 64
    @Option(help: "Local sockets (spread over 127.0.0.2...).") var sockets: Int = 16
    @Option(help: "Requests of a closed loop written and signed before the clock starts (default: enough for the whole run at 600 000/s, at most 6 000 000; 0 signs every request during the run).")
    var presign: Int?
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard (1...1_000_000).contains(clients) else { throw ValidationError("--clients must be 1...1000000") }
        guard duration > 0, duration <= 60 else { throw ValidationError("--duration must be in (0, 60]") }
        guard hold >= 0, hold <= 3600 else { throw ValidationError("--hold must be in [0, 3600]") }
        guard (1...4096).contains(window) else { throw ValidationError("--window must be 1...4096") }
        guard (1...256).contains(sockets) else { throw ValidationError("--sockets must be 1...256") }
        guard (0...20_000_000).contains(presign ?? 0) else { throw ValidationError("--presign must be 0...20000000") }
        guard let endpoint = try? Endpoint(parsing: server), endpoint.address.octets.0 == 127 else {
            throw ValidationError("--server must be a loopback HOST:PORT (127.x.y.z:port)")
        }
    }

    func run() throws {
        let target = try Endpoint(parsing: server)
        let presign = presign ?? min(6_000_000, Int(duration * 600_000))
        var load = try LoadRun(server: target, sockets: sockets, window: window, presign: max(0, presign))
        let summary: Summary
        switch mode {
        case .stun:
            summary = load.stun(duration: duration)
        case .echo:
            summary = load.echo(duration: duration)
        case .register:
            summary = load.register(count: clients, timeLimit: max(duration, 60))
        case .keepalive:
            let registered = load.register(count: clients, timeLimit: 120)
            guard registered.completed == clients else { summary = registered; break }
            summary = load.keepAlive(duration: duration)
        case .relay:
            let registered = load.register(count: 2, timeLimit: 10)
            guard registered.completed == 2 else { summary = registered; break }
            summary = load.relay(duration: duration)
        }
        print(json ? summary.json(mode: mode.rawValue) : summary.line(mode: mode.rawValue))
        if hold > 0 { load.hold(seconds: hold) }
    }
}

struct Summary {
    var completed: Int
    var sent: Int
    var seconds: Double
    var latencies: [Double]
    var registered: Int

    var rate: Double { seconds > 0 ? Double(completed) / seconds : 0 }
    var loss: Double { sent > 0 ? Double(sent - completed) / Double(sent) * 100 : 0 }

    func percentile(_ p: Double) -> Double {
        guard !latencies.isEmpty else { return 0 }
        let sorted = latencies.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
    }

    func line(mode: String) -> String {
        "RESULT mode=\(mode) rate=\(Int(rate))/s completed=\(completed) sent=\(sent) loss_pct=\(String(format2: loss)) "
            + "p50_us=\(String(format2: percentile(0.5))) p99_us=\(String(format2: percentile(0.99))) registered=\(registered)"
    }

    func json(mode: String) -> String {
        "{\"mode\":\"\(mode)\",\"rate\":\(Int(rate)),\"completed\":\(completed),\"sent\":\(sent),\"loss_pct\":\(String(format2: loss)),"
            + "\"p50_us\":\(String(format2: percentile(0.5))),\"p99_us\":\(String(format2: percentile(0.99))),\"registered\":\(registered)}"
    }
}

extension String {
    init(format2 value: Double) {
        let scaled = (value * 100).rounded() / 100
        self = "\(scaled)"
    }
}

func monotonicMicros() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) * 1e6 + Double(spec.tv_nsec) / 1e3
}

/// One simulated extended client.
struct SimClient {
    var id: ClientID
    var socket: Int
    var sessionKey: KeyBytes?
    var counter: UInt64 = 0
}

struct LoadRun {
    let server: Endpoint
    let window: Int
    let presign: Int
    var fds: [Int32] = []
    /// Per socket: its address and port as the server sees them.
    var localEndpoints: [Endpoint] = []
    var clients: [SimClient] = []
    let identity = IdentityKey()
    var random = SystemRandomNumberGenerator()

    init(server: Endpoint, sockets: Int, window: Int, presign: Int) throws {
        self.server = server
        self.window = window
        self.presign = presign
        for index in 0..<sockets {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw ValidationError("socket: errno \(errno)") }
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = IPv4Address(127, 0, UInt8(1 + index / 250), UInt8(2 + index % 250)).bits.bigEndian
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw ValidationError("bind: errno \(errno)") }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var name = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let named = withUnsafeMutablePointer(to: &name) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { throw ValidationError("getsockname: errno \(errno)") }
            localEndpoints.append(Endpoint(address: IPv4Address(bits: UInt32(bigEndian: name.sin_addr.s_addr)),
                                           port: UInt16(bigEndian: name.sin_port)))
            fds.append(fd)
        }
    }

    func send(_ bytes: [UInt8], on fd: Int32) {
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = server.port.bigEndian
        remote.sin_addr.s_addr = server.address.bits.bigEndian
        _ = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &remote) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// Waits up to `timeoutMillis` for any socket to be readable and returns the datagrams read.
    func receive(timeoutMillis: Int32) -> [(socket: Int, bytes: [UInt8])] {
        var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&polls, nfds_t(polls.count), timeoutMillis) > 0 else { return [] }
        var result: [(Int, [UInt8])] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        for (index, entry) in polls.enumerated() where entry.revents & Int16(POLLIN) != 0 {
            for _ in 0..<256 {
                let count = recv(fds[index], &buffer, buffer.count, 0)
                if count <= 0 { break }
                result.append((index, Array(buffer[0..<count])))
            }
        }
        return result
    }

    // MARK: modes

    var closedLoop: ClosedLoop { ClosedLoop(fds: fds, server: server, window: window, presign: presign) }

    func stun(duration: Double) -> Summary {
        var traffic = STUNTraffic(localEndpoints: localEndpoints)
        return closedLoop.run(&traffic, duration: duration, registered: 0)
    }

    /// The relay's traffic sent to an echo server from two unregistered clients' sockets.
    func echo(duration: Double) -> Summary {
        guard let from = try? ClientID("load0"), let to = try? ClientID("load1") else {
            return Summary(completed: 0, sent: 0, seconds: 0, latencies: [], registered: 0)
        }
        var traffic = RelayTraffic(from: SimClient(id: from, socket: 0, sessionKey: KeyBytes(Array(repeating: 7, count: 32))),
                                   to: SimClient(id: to, socket: 1 % fds.count), payload: Self.relayPayload, echo: true)
        return closedLoop.run(&traffic, duration: duration, registered: 0)
    }

    static let relayPayload = [UInt8](repeating: 0xAB, count: 64)

    /// Registers `count` clients: classic offer → challenge → signed registration → registered.
    mutating func register(count: Int, timeLimit: Double) -> Summary {
        let start = monotonicMicros()
        var pendingOffer: [ClientID: (sent: Double, client: Int)] = [:]
        var pendingRegistration: [Int: (Double, Token128)] = [:]
        var latencies: [Double] = []
        var nextClient = clients.count
        let target = clients.count + count
        var completed = 0, sent = 0
        var byName: [ClientID: Int] = [:]
        var cookieFor: [Int: Token128] = [:]
        while completed < count, monotonicMicros() - start < timeLimit * 1e6 {
            // Offers and registrations unanswered for a second were lost (or rate-limited): send again.
            let now = monotonicMicros()
            for (id, entry) in pendingOffer where now - entry.sent > 1e6 {
                send(ClassicMessage.register(id, privateAddress: IPv4Address(10, 0, 0, 1), offers: [ExtendedMessage.offer]).encode(),
                     on: fds[clients[entry.client].socket])
                pendingOffer[id] = (now, entry.client)
                sent += 1
            }
            for (index, entry) in pendingRegistration where now - entry.0 > 1e6 {
                pendingRegistration[index] = nil
                send(ClassicMessage.register(clients[index].id, privateAddress: IPv4Address(10, 0, 0, 1),
                                             offers: [ExtendedMessage.offer]).encode(), on: fds[clients[index].socket])
                pendingOffer[clients[index].id] = (now, index)
                sent += 1
            }
            while nextClient < target, pendingOffer.count + pendingRegistration.count < window {
                guard let id = try? ClientID("load\(nextClient)") else { break }
                let client = SimClient(id: id, socket: nextClient % fds.count)
                clients.append(client)
                byName[id] = nextClient
                send(ClassicMessage.register(id, privateAddress: IPv4Address(10, 0, 0, 1), offers: [ExtendedMessage.offer]).encode(),
                     on: fds[client.socket])
                pendingOffer[id] = (monotonicMicros(), nextClient)
                sent += 1
                nextClient += 1
            }
            for (socketIndex, bytes) in receive(timeoutMillis: 200) {
                guard let message = try? ExtendedMessage.decode(bytes) else { continue }
                switch message {
                case .challenge(let cookie):
                    // Challenges carry no ID: answer the oldest offer on this socket.
                    guard let (id, entry) = pendingOffer.filter({ clients[$0.value.client].socket == socketIndex })
                        .min(by: { $0.value.sent < $1.value.sent }) else { continue }
                    pendingOffer[id] = nil
                    cookieFor[entry.client] = cookie
                    let registration = SessionCrypto.signedRegistration(
                        id: id, cookie: cookie, privateEndpoints: [Endpoint(address: IPv4Address(10, 0, 0, 1), port: 10081)],
                        natKind: .none, identity: identity, subscribe: false)
                    send(registration, on: fds[socketIndex])
                    pendingRegistration[entry.client] = (monotonicMicros(), cookie)
                case .registered(let serverKey, _, _, _, let nonce):
                    // The registered message names no ID either: take the oldest registration on this socket.
                    guard let (index, entry) = pendingRegistration.filter({ clients[$0.key].socket == socketIndex })
                        .min(by: { $0.value.0 < $1.value.0 }) else { continue }
                    pendingRegistration[index] = nil
                    clients[index].sessionKey = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: serverKey,
                                                                         cookie: entry.1, nonce: nonce, id: clients[index].id)
                    completed += 1
                    latencies.append(monotonicMicros() - entry.0)
                default:
                    continue
                }
            }
        }
        _ = byName
        _ = cookieFor
        return Summary(completed: completed, sent: sent, seconds: (monotonicMicros() - start) / 1e6, latencies: latencies,
                       registered: clients.filter { $0.sessionKey != nil }.count)
    }

    mutating func keepAliveMessage(_ index: Int) -> [UInt8] {
        clients[index].counter += 1
        guard let key = clients[index].sessionKey else { return [] }
        return SessionCrypto.authenticated(.keepAlive(id: clients[index].id, natKind: .none, counter: clients[index].counter,
                                                      tag: .zero), key: key)
    }

    mutating func keepAlive(duration: Double) -> Summary {
        var traffic = KeepAliveTraffic(clients: clients, localEndpoints: localEndpoints)
        let summary = closedLoop.run(&traffic, duration: duration, registered: clients.count)
        for index in clients.indices { clients[index].counter = traffic.counters[index] }
        return summary
    }

    mutating func relay(duration: Double) -> Summary {
        guard clients.count >= 2, clients[0].sessionKey != nil else {
            return Summary(completed: 0, sent: 0, seconds: 0, latencies: [], registered: clients.count)
        }
        var traffic = RelayTraffic(from: clients[0], to: clients[1], payload: Self.relayPayload, echo: false)
        let summary = closedLoop.run(&traffic, duration: duration, registered: clients.count)
        clients[0].counter = traffic.counter
        return summary
    }

    /// Keeps every client alive (a keep-alive each 10 s) for `seconds`: a hundredth of the
    /// clients every 100 ms, the acknowledgements read in between.
    mutating func hold(seconds: Double) {
        let end = monotonicMicros() + seconds * 1e6
        var next = 0
        var tick = monotonicMicros()
        while monotonicMicros() < end {
            let perTick = max(1, clients.count / 100)
            for _ in 0..<perTick where !clients.isEmpty {
                let index = next % clients.count
                next += 1
                let bytes = keepAliveMessage(index)
                send(bytes, on: fds[clients[index].socket])
            }
            tick += 100_000
            while case let left = tick - monotonicMicros(), left > 0 {
                _ = receive(timeoutMillis: Int32(max(1, left / 1000)))
            }
        }
    }
}
