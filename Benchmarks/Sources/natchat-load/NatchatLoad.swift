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

            --subscribers S registers S more clients first that subscribe to the roster (sub0...), each on
            its own socket, acknowledging every roster delta like a chat shell; register then reports the
            rate per bucket of registrations (buckets=COUNT:PER_SECOND,...) and, with --server-pid, the
            server's CPU time per registration.
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
    @Option(help: "Clients registered with subscribe: true before the measured ones (each on a socket of its own, 127.1.x.y); they acknowledge every roster delta and send a keep-alive every 10 s, during the registrations and --hold.")
    var subscribers: Int = 0
    @Option(help: "register: report the rate per bucket of this many registrations (default 10000, or a tenth of --clients when that is smaller).")
    var bucketSize: Int?
    @Option(help: "register: report the rate per bucket ending at each of these counts of measured registrations (comma-separated, e.g. 1000,10000,100000), instead of --bucket-size.")
    var buckets: String?
    @Option(help: "register: the server's process ID, to report its CPU time per registration (all threads, /proc/PID/task/*/schedstat), overall and per bucket.")
    var serverPid: Int32?
    @Flag(help: "Print the summary as JSON.") var json = false

    func validate() throws {
        guard (1...1_000_000).contains(clients) else { throw ValidationError("--clients must be 1...1000000") }
        guard duration > 0, duration <= 60 else { throw ValidationError("--duration must be in (0, 60]") }
        guard hold >= 0, hold <= 3600 else { throw ValidationError("--hold must be in [0, 3600]") }
        guard (1...4096).contains(window) else { throw ValidationError("--window must be 1...4096") }
        guard (1...256).contains(sockets) else { throw ValidationError("--sockets must be 1...256") }
        guard (0...20_000_000).contains(presign ?? 0) else { throw ValidationError("--presign must be 0...20000000") }
        guard (0...10_000).contains(subscribers) else { throw ValidationError("--subscribers must be 0...10000") }
        guard (bucketSize ?? 1) >= 1 else { throw ValidationError("--bucket-size must be positive") }
        guard (try? bucketBoundaries()) != nil else { throw ValidationError("--buckets must be increasing positive counts, comma-separated") }
        guard let endpoint = try? Endpoint(parsing: server), endpoint.address.octets.0 == 127 else {
            throw ValidationError("--server must be a loopback HOST:PORT (127.x.y.z:port)")
        }
    }

    /// The bucket boundaries in measured registrations (for `register`).
    func bucketBoundaries() throws -> [Int] {
        if let buckets {
            let values = try buckets.split(separator: ",").map { text -> Int in
                guard let value = Int(text.filter { $0 != " " }), value > 0 else { throw ValidationError("bad bucket \(text)") }
                return value
            }
            guard !values.isEmpty, zip(values, values.dropFirst()).allSatisfy({ $0 < $1 }) else { throw ValidationError("not increasing") }
            return values
        }
        let size = bucketSize ?? max(1, min(10_000, clients / 10))
        return Array(stride(from: size, through: clients, by: size))
    }

    func run() throws {
        let target = try Endpoint(parsing: server)
        let presign = presign ?? min(6_000_000, Int(duration * 600_000))
        var load = try LoadRun(server: target, sockets: sockets, window: window, presign: max(0, presign), subscribers: subscribers)
        // Subscribers first: the measured registrations then happen with them watching.
        if subscribers > 0 {
            let ready = load.registerSubscribers(count: subscribers, timeLimit: 60)
            guard ready == subscribers else {
                print("natchat-load: only \(ready) of \(subscribers) subscribers registered")
                throw ExitCode.failure
            }
        }
        var summary: Summary
        switch mode {
        case .stun:
            summary = load.stun(duration: duration)
        case .echo:
            summary = load.echo(duration: duration)
        case .register:
            summary = load.register(count: clients, timeLimit: max(duration, subscribers > 0 ? 3600 : 60),
                                    buckets: try bucketBoundaries(), serverPID: serverPid)
        case .keepalive:
            let registered = load.register(count: clients, timeLimit: 120)
            guard registered.completed == clients else { summary = registered; break }
            load.subscriberPool.keepAliveAll() // just before the closed loop, which does not serve them
            summary = load.keepAlive(duration: duration)
        case .relay:
            let registered = load.register(count: 2, timeLimit: 10)
            guard registered.completed == 2 else { summary = registered; break }
            load.subscriberPool.keepAliveAll()
            summary = load.relay(duration: duration)
        }
        if subscribers > 0 {
            // What is still in flight to the subscribers (the last partial datagram waits 50 ms).
            load.settleSubscribers(quietMillis: 200, timeLimit: 10)
        }
        summary.subscribers = load.subscriberPool.registered
        summary.rosterDatagrams = load.subscriberPool.datagrams
        summary.rosterRecords = load.subscriberPool.records
        summary.rosterAcks = load.subscriberPool.acks
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
    /// Per bucket: the count of measured registrations it ends at and its rate (registrations/s).
    var buckets: [(count: Int, rate: Double)] = []
    /// The server's CPU time per registration (µs), overall and per bucket, with --server-pid.
    var serverMicrosPerRegistration: Double?
    var bucketServerMicros: [Double] = []
    var subscribers = 0
    var rosterDatagrams = 0
    var rosterRecords = 0
    var rosterAcks = 0

    var rate: Double { seconds > 0 ? Double(completed) / seconds : 0 }
    var loss: Double { sent > 0 ? Double(sent - completed) / Double(sent) * 100 : 0 }

    func percentile(_ p: Double) -> Double {
        guard !latencies.isEmpty else { return 0 }
        let sorted = latencies.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
    }

    func line(mode: String) -> String {
        var line = "RESULT mode=\(mode) rate=\(Int(rate))/s completed=\(completed) sent=\(sent) loss_pct=\(String(format2: loss)) "
            + "p50_us=\(String(format2: percentile(0.5))) p99_us=\(String(format2: percentile(0.99))) registered=\(registered)"
        if subscribers > 0 {
            line += " subscribers=\(subscribers) roster_datagrams=\(rosterDatagrams) roster_records=\(rosterRecords) roster_acks=\(rosterAcks)"
        }
        if !buckets.isEmpty {
            // COUNT:PER_SECOND for each bucket of measured registrations, ending at COUNT.
            line += " buckets=" + buckets.map { "\($0.count):\(Int($0.rate))" }.joined(separator: ",")
        }
        if let serverMicrosPerRegistration {
            line += " server_cpu_us=\(String(format2: serverMicrosPerRegistration))"
            if !bucketServerMicros.isEmpty {
                line += " bucket_server_cpu_us=" + zip(buckets, bucketServerMicros).map { "\($0.count):\(String(format2: $1))" }
                    .joined(separator: ",")
            }
        }
        return line
    }

    func json(mode: String) -> String {
        var json = "{\"mode\":\"\(mode)\",\"rate\":\(Int(rate)),\"completed\":\(completed),\"sent\":\(sent),\"loss_pct\":\(String(format2: loss)),"
            + "\"p50_us\":\(String(format2: percentile(0.5))),\"p99_us\":\(String(format2: percentile(0.99))),\"registered\":\(registered)"
        json += ",\"subscribers\":\(subscribers),\"roster_datagrams\":\(rosterDatagrams),\"roster_records\":\(rosterRecords),"
            + "\"roster_acks\":\(rosterAcks)"
        if !buckets.isEmpty {
            json += ",\"buckets\":[" + buckets.enumerated().map { index, bucket in
                "{\"registered\":\(bucket.count),\"rate\":\(Int(bucket.rate))"
                    + (index < bucketServerMicros.count ? ",\"server_cpu_us\":\(String(format2: bucketServerMicros[index]))" : "") + "}"
            }.joined(separator: ",") + "]"
        }
        if let serverMicrosPerRegistration { json += ",\"server_cpu_us\":\(String(format2: serverMicrosPerRegistration))" }
        return json + "}"
    }
}

extension String {
    init(format2 value: Double) {
        let scaled = (value * 100).rounded() / 100
        self = "\(scaled)"
    }
}

/// A process's CPU time so far in µs, all threads: the sum of the run times (ns) in
/// /proc/PID/task/*/schedstat, or, where that is missing, user + system time from
/// /proc/PID/stat (fields 14 and 15, in clock ticks of 10 ms: too coarse for short runs).
func processCPUMicros(_ pid: Int32) -> Double? {
    if let directory = opendir("/proc/\(pid)/task") {
        defer { closedir(directory) }
        var nanoseconds = 0.0, threads = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.first?.isNumber == true, let line = firstLine(of: "/proc/\(pid)/task/\(name)/schedstat"),
                  let first = line.split(separator: " ").first, let value = Double(first) else { continue }
            nanoseconds += value
            threads += 1
        }
        if threads > 0 { return nanoseconds / 1e3 }
    }
    guard let text = firstLine(of: "/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let fields = text[text.index(after: close)...].split(separator: " ")
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK))) * 1e6
}

func firstLine(of path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = buffer.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count - 1, file) }
    guard count > 0 else { return nil }
    return String(decoding: buffer[..<count].prefix { $0 != 10 }, as: UTF8.self)
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

/// A non-blocking UDP socket bound to `address` (any port), with 4 MiB buffers; its
/// address and port as the server sees them.
func openSocket(address: IPv4Address) throws -> (fd: Int32, endpoint: Endpoint) {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { throw ValidationError("socket: errno \(errno)") }
    var size: Int32 = 4 << 20
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    local.sin_addr.s_addr = address.bits.bigEndian
    let bound = withUnsafePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw ValidationError("bind \(address): errno \(errno)") }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    var name = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &name) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw ValidationError("getsockname: errno \(errno)") }
    return (fd, Endpoint(address: IPv4Address(bits: UInt32(bigEndian: name.sin_addr.s_addr)), port: UInt16(bigEndian: name.sin_port)))
}

struct LoadRun {
    let server: Endpoint
    let window: Int
    let presign: Int
    var fds: [Int32] = []
    /// Per socket: its address and port as the server sees them.
    var localEndpoints: [Endpoint] = []
    var clients: [SimClient] = []
    var subscriberPool: SubscriberPool
    let identity = IdentityKey()
    var random = SystemRandomNumberGenerator()

    init(server: Endpoint, sockets: Int, window: Int, presign: Int, subscribers: Int = 0) throws {
        self.server = server
        self.window = window
        self.presign = presign
        for index in 0..<sockets {
            let (fd, endpoint) = try openSocket(address: IPv4Address(127, 0, UInt8(1 + index / 250), UInt8(2 + index % 250)))
            fds.append(fd)
            localEndpoints.append(endpoint)
        }
        subscriberPool = try SubscriberPool(server: server, count: subscribers)
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

    /// Waits up to `timeoutMillis` for any of `sockets` (or a subscriber's socket) to be
    /// readable and returns the datagrams read from `sockets`; the subscribers' roster
    /// datagrams are handled on the way (and their keep-alives sent when due).
    mutating func receive(from sockets: [Int32], timeoutMillis: Int32) -> [(socket: Int, bytes: [UInt8])] {
        subscriberPool.tick()
        let watched = subscriberPool.registered
        var polls = (sockets + subscriberPool.fds.prefix(watched)).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&polls, nfds_t(polls.count), timeoutMillis) > 0 else { return [] }
        var result: [(Int, [UInt8])] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        for (index, entry) in polls.enumerated() where entry.revents & Int16(POLLIN) != 0 {
            guard index < sockets.count else {
                subscriberPool.drain(index - sockets.count)
                continue
            }
            for _ in 0..<256 {
                let count = recv(sockets[index], &buffer, buffer.count, 0)
                if count <= 0 { break }
                result.append((index, Array(buffer[0..<count])))
            }
        }
        return result
    }

    mutating func receive(timeoutMillis: Int32) -> [(socket: Int, bytes: [UInt8])] {
        receive(from: fds, timeoutMillis: timeoutMillis)
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

    /// Registers `count` clients (`load0`, `load1`, ..., not subscribing), `window` at a time,
    /// and reports the rate, overall and per bucket of registrations ending at each of `buckets`.
    mutating func register(count: Int, timeLimit: Double, buckets: [Int] = [], serverPID: Int32? = nil) -> Summary {
        let first = clients.count
        for index in first..<(first + count) {
            guard let id = try? ClientID("load\(index)") else { break }
            clients.append(SimClient(id: id, socket: index % fds.count))
        }
        let ids = clients[first...].map(\.id), sockets = clients[first...].map(\.socket)
        subscriberPool.resetCounts()
        let cpuBefore = serverPID.flatMap(processCPUMicros)
        let outcome = registerAll(ids: ids, sockets: sockets, on: fds, subscribe: false, timeLimit: timeLimit, buckets: buckets,
                                  serverPID: serverPID)
        let cpuAfter = serverPID.flatMap(processCPUMicros)
        for (offset, key) in outcome.keys.enumerated() { clients[first + offset].sessionKey = key }
        var summary = Summary(completed: outcome.completed, sent: outcome.sent, seconds: outcome.seconds, latencies: outcome.latencies,
                              registered: clients.filter { $0.sessionKey != nil }.count)
        summary.buckets = outcome.buckets
        if let cpuBefore, let cpuAfter, outcome.completed > 0 {
            summary.serverMicrosPerRegistration = (cpuAfter - cpuBefore) / Double(outcome.completed)
            var previous = (count: 0, micros: cpuBefore)
            for (bucket, micros) in zip(outcome.buckets, outcome.bucketServerCPU) {
                summary.bucketServerMicros.append((micros - previous.micros) / Double(max(1, bucket.count - previous.count)))
                previous = (bucket.count, micros)
            }
        }
        return summary
    }

    /// Registers `count` subscribers (`sub0`, `sub1`, ..., one socket each), lets their first
    /// roster datagrams settle, and returns how many registered.
    mutating func registerSubscribers(count: Int, timeLimit: Double) -> Int {
        let ids = (0..<count).compactMap { try? ClientID("sub\($0)") }
        let outcome = registerAll(ids: ids, sockets: Array(ids.indices), on: subscriberPool.fds, subscribe: true, timeLimit: timeLimit,
                                  buckets: [], serverPID: nil)
        subscriberPool.adopt(ids: ids, keys: outcome.keys)
        settleSubscribers(quietMillis: 200, timeLimit: 10)
        return subscriberPool.registered
    }

    /// Serves the subscribers until no roster datagram came for `quietMillis` (or `timeLimit` s).
    mutating func settleSubscribers(quietMillis: Int32, timeLimit: Double) {
        let end = monotonicMicros() + timeLimit * 1e6
        var quietSince = monotonicMicros()
        while monotonicMicros() < end, monotonicMicros() - quietSince < Double(quietMillis) * 1000 {
            let before = subscriberPool.datagrams
            subscriberPool.service(timeoutMillis: 20)
            if subscriberPool.datagrams != before { quietSince = monotonicMicros() }
        }
    }

    struct RegistrationOutcome {
        var keys: [KeyBytes?]
        var completed = 0
        var sent = 0
        var seconds = 0.0
        var latencies: [Double] = []
        var buckets: [(count: Int, rate: Double)] = []
        /// The server's CPU time (µs) at the end of each bucket.
        var bucketServerCPU: [Double] = []
    }

    /// Registers `ids[i]` from `fds[sockets[i]]`: classic offer → challenge → signed
    /// registration → registered (matched by the cookie it echoes), `window` in progress at once.
    mutating func registerAll(ids: [ClientID], sockets: [Int], on fds: [Int32], subscribe: Bool, timeLimit: Double,
                              buckets: [Int], serverPID: Int32?) -> RegistrationOutcome {
        let start = monotonicMicros()
        var outcome = RegistrationOutcome(keys: Array(repeating: nil, count: ids.count))
        var pendingOffer: [Int: Double] = [:]                                     // client → sent at
        var pendingRegistration: [Int: (sent: Double, cookie: Token128)] = [:]    // client → sent at, cookie
        var next = 0
        var bucketIndex = 0, bucketStart = (count: 0, time: start)
        func offer(_ index: Int) {
            send(ClassicMessage.register(ids[index], privateAddress: IPv4Address(10, 0, 0, 1), offers: [ExtendedMessage.offer]).encode(),
                 on: fds[sockets[index]])
            pendingOffer[index] = monotonicMicros()
            outcome.sent += 1
        }
        var lastProgress = (count: 0, time: start)
        while outcome.completed < ids.count, monotonicMicros() - start < timeLimit * 1e6 {
            // Nothing registered for 20 s: the server refuses or is gone.
            if outcome.completed != lastProgress.count { lastProgress = (outcome.completed, monotonicMicros()) }
            if monotonicMicros() - lastProgress.time > 20e6 { break }
            // Offers and registrations unanswered for a second were lost (or rate-limited): start again.
            let now = monotonicMicros()
            for (index, sent) in pendingOffer where now - sent > 1e6 { offer(index) }
            for (index, entry) in pendingRegistration where now - entry.sent > 1e6 {
                pendingRegistration[index] = nil
                offer(index)
            }
            while next < ids.count, pendingOffer.count + pendingRegistration.count < window {
                offer(next)
                next += 1
            }
            for (socketIndex, bytes) in receive(from: fds, timeoutMillis: 200) {
                guard let message = try? ExtendedMessage.decode(bytes) else { continue }
                switch message {
                case .challenge(let cookie):
                    // Challenges carry no ID: answer the oldest offer on this socket.
                    guard let (index, _) = pendingOffer.filter({ sockets[$0.key] == socketIndex }).min(by: { $0.value < $1.value })
                    else { continue }
                    pendingOffer[index] = nil
                    let registration = SessionCrypto.signedRegistration(
                        id: ids[index], cookie: cookie, privateEndpoints: [Endpoint(address: IPv4Address(10, 0, 0, 1), port: 10081)],
                        natKind: .none, identity: identity, subscribe: subscribe)
                    send(registration, on: fds[socketIndex])
                    pendingRegistration[index] = (monotonicMicros(), cookie)
                case .registered(let serverKey, _, _, _, let nonce, let echoed):
                    // The answer echoes the registration's cookie (two offers from one socket
                    // may get the same cookie: then the oldest of them).
                    guard let (index, entry) = pendingRegistration.filter({ sockets[$0.key] == socketIndex && $0.value.cookie == echoed })
                        .min(by: { $0.value.sent < $1.value.sent }) else { continue }
                    pendingRegistration[index] = nil
                    outcome.keys[index] = SessionCrypto.sessionKey(privateKey: identity.agreement, peerPublicKey: serverKey,
                                                                   cookie: entry.cookie, nonce: nonce, id: ids[index])
                    outcome.completed += 1
                    let arrived = monotonicMicros()
                    outcome.latencies.append(arrived - entry.sent)
                    if bucketIndex < buckets.count, outcome.completed >= buckets[bucketIndex] {
                        let seconds = (arrived - bucketStart.time) / 1e6
                        outcome.buckets.append((buckets[bucketIndex], seconds > 0 ? Double(outcome.completed - bucketStart.count) / seconds : 0))
                        bucketStart = (outcome.completed, arrived)
                        bucketIndex += 1
                        if let serverPID, let micros = processCPUMicros(serverPID) { outcome.bucketServerCPU.append(micros) }
                    }
                default:
                    continue
                }
            }
        }
        outcome.seconds = (monotonicMicros() - start) / 1e6
        return outcome
    }

    mutating func keepAliveMessage(_ index: Int) -> [UInt8] {
        clients[index].counter += 1
        guard let key = clients[index].sessionKey else { return [] }
        return SessionCrypto.sealed(.keepAlive(id: clients[index].id, natKind: .none), counter: clients[index].counter, key: key)
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
