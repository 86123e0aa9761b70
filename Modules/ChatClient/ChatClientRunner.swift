#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import AddressDiscovery
import Addressing
import Dispatch
import HolePunch
import Identity
import KnownPeers
import LineEditor
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import PortMapping
import PortMappingPosix
import Synchronization
import TransportPosix

/// Wires a ``ChatClientService`` to a UDP socket and a console, and runs the shell until
/// `@exit`, end of input, SIGINT or SIGTERM — unregistering before it returns.
public enum ChatClientRunner {
    /// Everything the `natchat` command line decides.
    public struct Options: Sendable {
        public var id: ClientID
        /// The first server to register with.
        public var server: Endpoint
        /// The servers to move to, in order, when the current one stops answering (a
        /// ``ServerList``'s fallbacks); empty: one server.
        public var fallbackServers: [Endpoint] = []
        public var bindAddress: String
        public var port: Int
        public var keepAliveInterval: Duration
        public var peerPrivatePort: UInt16
        public var historyPath: String?
        /// Use readline (`nil`: when stdin and stdout are terminals).
        public var interactive: Bool?
        /// Propose the extended dialect; `false` speaks the seed's protocol only.
        public var offerExtended: Bool = true
        /// The identity file (created on first run); `nil`: a key for this run only.
        public var identityPath: String? = IdentityKey.defaultPath()
        /// The known-peers file (created when a first peer is seen); `nil`: known peers are
        /// off (no key is checked beyond the session's own pins).
        public var knownPeersPath: String? = KnownPeersFile.defaultPath()
        /// The server as the user named it (`host:port`, or the whole list: ``ServerList/name``),
        /// the known peers' server field (`nil`: the servers' addresses and ports).
        public var serverName: String?
        /// Instead of a chat shell: release our ID's claim, or hand it to a new key.
        public var claimChange: ClaimChangeMode?
        /// Serve `@status` on the status socket for `natchat --status` (see ``StatusSocket``).
        public var serveStatus = true
        /// Ask the gateway for a mapping of the chat port (PCP, NAT-PMP, UPnP IGD), keep it
        /// renewed, delete it at exit (``PortMapper``); `false`: `--no-port-mapping`. Never
        /// on a loopback bind address (nothing to map, and no gateway to bother).
        public var portMapping = true
        /// The lifetime asked for with PCP and NAT-PMP, seconds (`--port-mapping-lifetime`).
        public var portMappingLifetime: UInt32 = 7200
        /// Called with each mapping the gateway grants, and `nil` when it is lost or
        /// deleted (see ``ChatClientRunner/portMappingChanged(_:options:logger:)``).
        public var onPortMapping: (@Sendable (Mapping?) -> Void)?
        /// Sockets for port probing towards a peer behind a cone NAT when ours is symmetric
        /// (`PortProbe.Configuration.socketCount`); 0 turns port probing off.
        public var probeSockets = PathAgent.Configuration().portProbe.socketCount

        public init(id: ClientID, server: Endpoint, bindAddress: String = "0.0.0.0", port: Int = 10081,
                    keepAliveInterval: Duration = .seconds(10), peerPrivatePort: UInt16 = 10081,
                    historyPath: String? = ChatClientRunner.defaultHistoryPath(), interactive: Bool? = nil) {
            self.id = id
            self.server = server
            self.bindAddress = bindAddress
            self.port = port
            self.keepAliveInterval = keepAliveInterval
            self.peerPrivatePort = peerPrivatePort
            self.historyPath = historyPath
            self.interactive = interactive
        }
    }

    /// `$XDG_STATE_HOME/natchat/history`, else `~/.local/state/natchat/history`; the folder
    /// is created (owner-only). `nil` when there is no home.
    public static func defaultHistoryPath() -> String? {
        let base: String
        if let state = ClientFolders.environment("XDG_STATE_HOME") {
            base = state
        } else if let home = ClientFolders.environment("HOME") {
            base = home + "/.local/state"
        } else {
            return nil
        }
        let folder = base + "/natchat"
        ClientFolders.makeFolders(folder)
        return folder + "/history"
    }

    /// The private address to report: the bound address when one was given, else the
    /// address the kernel would use towards the server.
    /// The path agents' settings with `probeSockets` sockets for port probing (0: off).
    static func pathConfiguration(probeSockets: Int) -> PathAgent.Configuration {
        var configuration = PathAgent.Configuration()
        configuration.portProbe.socketCount = max(0, probeSockets)
        configuration.portProbing = probeSockets > 0
        return configuration
    }

    public static func privateAddress(bindAddress: String, server: Endpoint) -> IPv4Address {
        if let bound = try? IPv4Address(parsing: bindAddress), bound.bits != 0 { return bound }
        return (try? PrivateAddress.discover(towards: server)) ?? IPv4Address(127, 0, 0, 1)
    }

    /// Entries a `@show_list` page holds: the terminal's height less three lines (the typed
    /// command, the line under the page, the prompt) when stdout is a terminal of known size,
    /// else ``ChatClientService/Configuration/defaultListPageSize``.
    public static func listPageSize() -> Int {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 0 else {
            return ChatClientService.Configuration.defaultListPageSize
        }
        return max(5, Int(size.ws_row) - 3)
    }

    /// How long Tab waits for peer IDs (past the server's roster limit they come from the
    /// server; the service falls back to the peers it holds when the server is slower).
    static let completionWait = DispatchTimeInterval.milliseconds(2500)

    /// Binds the client's socket and starts its service on it; `nil` (said on the console's
    /// stream) when the address cannot be bound.
    static func bindService(_ options: Options, configuration: ChatClientService.Configuration, sinks: ChatClientService.Sinks,
                            logger: Logger) -> DatagramHost<ChatClientService>? {
        do {
            return try DatagramHost.bindBlocking(host: options.bindAddress, port: options.port,
                                                 group: MultiThreadedEventLoopGroup.singleton, logger: logger) {
                ChatClientService(configuration: configuration, sinks: sinks, logger: logger)
            }
        } catch {
            LineWriter.write("natchat: cannot bind UDP \(options.bindAddress):\(options.port): \(error)")
            return nil
        }
    }

    /// What `--release-id` and `--rotate-identity` ask.
    public enum ClaimChangeMode: Sendable {
        case release
        case rotate
    }

    /// `--release-id` / `--rotate-identity`: registers with the identity file's key, asks the
    /// server for the change, leaves. A rotation writes the new key to `PATH.new` before it
    /// asks (so that a key the server already took is never lost), and once the server
    /// confirms, keeps the old one as `PATH.old` and puts the new one at `PATH`.
    /// Exit status: 0 done, 1 refused or unanswered (or no identity file), 2 registration refused.
    static func runClaimChange(_ mode: ClaimChangeMode, options: Options, logger: Logger) -> Int32 {
        guard let path = options.identityPath else {
            LineWriter.write("natchat: --release-id and --rotate-identity need the identity file (not --identity none)")
            return 1
        }
        let identity: IdentityKey
        do {
            identity = try IdentityKey.load(from: path)
        } catch {
            LineWriter.write("natchat: \(error)")
            return 1
        }
        let newPath = path + ".new"
        var newIdentity: IdentityKey?
        if mode == .rotate {
            let key = IdentityKey()
            unlink(newPath)
            do {
                try key.save(to: newPath)
            } catch {
                LineWriter.write("natchat: \(error)")
                return 1
            }
            newIdentity = key
        }
        let outcome = Mutex<ClientEvent?>(nil)
        let finished = DispatchSemaphore(value: 0)
        let configuration = ChatClientService.Configuration(
            id: options.id, server: options.server, fallbackServers: options.fallbackServers,
            privateAddress: privateAddress(bindAddress: options.bindAddress, server: options.server), identity: identity,
            keepAliveInterval: options.keepAliveInterval, peerPrivatePort: options.peerPrivatePort, offerExtended: true)
        let sinks = ChatClientService.Sinks(event: { event in
            switch event {
            case .registered, .registrationRefused, .serverNotice, .claimReleased, .claimRotated, .claimChangeRefused,
                 .claimChangeUnanswered:
                for line in ShellFormatter.lines(for: event) { LineWriter.write(line) }
            default:
                break
            }
            switch event {
            case .registrationRefused, .claimReleased, .claimRotated, .claimChangeRefused, .claimChangeUnanswered:
                outcome.withLock { $0 = $0 ?? event }
                finished.signal()
            default:
                break
            }
        })
        guard let host = bindService(options, configuration: configuration, sinks: sinks, logger: logger) else { return 1 }
        let request: ClaimChangeRequest
        do {
            request = try newIdentity.map { try ChatClientStateMachine(configuration: configuration).rotation(to: $0) } ?? .release
        } catch {
            LineWriter.write("natchat: cannot sign the rotation: \(error)")
            return 1
        }
        let boundPort = UInt16(clamping: host.localAddress?.port ?? options.port)
        host.perform { service, output, now in
            service.localPortChosen(boundPort)
            service.start(now: now, output: &output)
            service.requestClaimChange(request, now: now, output: &output)
        }
        // Registration retries and ten sendings of the request fit well within this.
        _ = finished.wait(timeout: .now() + 30)
        host.performBlocking { service, output, now in service.leave(now: now, output: &output) }
        switch outcome.withLock({ $0 }) {
        case .claimReleased?:
            return 0
        case .claimRotated?:
            guard rename(path, path + ".old") == 0, rename(newPath, path) == 0 else {
                LineWriter.write("natchat: the server took the new key, but it could not be moved into place: it is in \(newPath)")
                return 1
            }
            LineWriter.write("* the new key is in \(path); the old one is in \(path).old")
            return 0
        case .registrationRefused?:
            return 2
        default:
            if case nil = outcome.withLock({ $0 }) { LineWriter.write("* the server did not answer") }
            if mode == .rotate {
                LineWriter.write("* the key is unchanged in \(path); if the server took the new one anyway, it is in \(newPath)")
            }
            return 1
        }
    }

    /// `natchat --status [--id ID]`: prints the status the running shell serves (the text
    /// `@status` prints). Exit status 0; 1 when no shell is running for the ID (or, without
    /// one, when none or several are), said on stderr.
    public static func runStatusQuery(id: ClientID?) -> Int32 {
        do {
            let path = try StatusSocket.socketPath(for: id)
            let text = try StatusSocket.fetch(path: path, group: MultiThreadedEventLoopGroup.singleton)
            LineWriter.writeRaw(text)
            return 0
        } catch {
            let message = Array("natchat: \(error)\n".utf8)
            _ = message.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            return 1
        }
    }

    /// Starts the port mapper for the bound chat port, unless `--no-port-mapping` or the
    /// bind address is loopback.
    static func startPortMapper(_ options: Options, port: UInt16, logger: Logger,
                                deliver: @escaping @Sendable (Mapping?) -> Void) -> PortMapper? {
        guard options.portMapping, port != 0 else { return nil }
        let bound = try? IPv4Address(parsing: options.bindAddress)
        if let bound, bound.bits >> 24 == 127 { return nil }
        var mapperOptions = PortMapper.Options(internalPort: port)
        mapperOptions.lifetime = options.portMappingLifetime
        if let bound, bound.bits != 0 { mapperOptions.clientAddress = bound }
        return PortMapper.start(mapperOptions, group: MultiThreadedEventLoopGroup.singleton, logger: logger) { mapping in
            portMappingChanged(mapping, options: options, logger: logger)
            deliver(mapping)
        }
    }

    /// The one place where a port mapping enters the client: each mapping the gateway grants
    /// (its external endpoint is a candidate like the STUN-mapped one, also behind a carrier
    /// NAT), and `nil` when it is lost or deleted. It goes to ``Options/onPortMapping``, and
    /// the session reports it to the server (``ChatClientService/portMappingChanged(_:now:output:)``),
    /// which passes it on to peers as a candidate.
    static func portMappingChanged(_ mapping: Mapping?, options: Options, logger: Logger) {
        logger.debug("port mapping: candidate \(mapping.map { "\($0.external)" } ?? "none")")
        options.onPortMapping?(mapping)
    }

    /// Runs the client; returns the process exit status.
    public static func run(_ options: Options, logger: Logger) -> Int32 {
        if let mode = options.claimChange { return runClaimChange(mode, options: options, logger: logger) }
        let interactive = options.interactive ?? standardStreamsAreTerminals()
        let console: any Console = interactive
            ? ReadlineConsole(prompt: "\(options.id)> ", commands: Command.names,
                              peerArgumentCommands: Command.peerArgumentNames, historyPath: options.historyPath)
            : PlainConsole()
        let refused = Atomic<Bool>(false)
        var identity = IdentityKey()
        if let path = options.identityPath {
            do {
                let (key, created) = try IdentityKey.loadOrCreate(at: path)
                identity = key
                if created { LineWriter.write("* created identity \(path) (key \(key.fingerprint))") }
            } catch {
                LineWriter.write("natchat: \(error)")
                return 1
            }
        }
        // A file that cannot be read is not overwritten: natchat refuses to start (the user's
        // pins would be lost, and a lost pin makes an impostor look like a new peer).
        let knownPeersFile = options.knownPeersPath.map(KnownPeersFile.init(path:))
        var knownPeers: KnownPeers?
        if let knownPeersFile {
            do {
                knownPeers = KnownPeers(records: try knownPeersFile.load())
            } catch {
                LineWriter.write("natchat: \(error)")
                return 1
            }
        }
        let writer = KnownPeersWriter(file: knownPeersFile, report: { console.show($0) })
        let configuration = ChatClientService.Configuration(
            id: options.id, server: options.server, fallbackServers: options.fallbackServers,
            privateAddress: privateAddress(bindAddress: options.bindAddress, server: options.server), identity: identity,
            keepAliveInterval: options.keepAliveInterval, peerPrivatePort: options.peerPrivatePort,
            offerExtended: options.offerExtended, pathConfiguration: Self.pathConfiguration(probeSockets: options.probeSockets),
            listPageSize: interactive ? listPageSize() : ChatClientService.Configuration.defaultListPageSize,
            knownPeers: knownPeers, knownPeersServer: options.serverName,
            wallClock: .init(instant: SystemClock().now(), unixSeconds: Int64(time(nil))))
        var sinks = ChatClientService.Sinks(
            display: { console.show($0) },
            registrationRefused: { _ in
                refused.store(true, ordering: .relaxed)
                console.stop()
            },
            saveKnownPeers: { writer.save($0) })
        let hostForProbes = Mutex<DatagramHost<ChatClientService>?>(nil)
        sinks.runRemapProbe = { [bindAddress = options.bindAddress] primary, alternate in
            RemapProbeRunner.start(primary: primary, alternate: alternate, bindAddress: bindAddress, logger: logger) { outcome in
                hostForProbes.withLock { $0 }?.perform { service, output, now in
                    service.remapProbeFinished(outcome, now: now, output: &output)
                }
            }
        }
        guard let host = bindService(options, configuration: configuration, sinks: sinks, logger: logger) else { return 1 }
        hostForProbes.withLock { $0 = host }
        // With --port 0 the kernel chose the port: report the real one as our private endpoint.
        let boundPort = UInt16(clamping: host.localAddress?.port ?? options.port)
        host.perform { service, output, now in
            service.localPortChosen(boundPort)
            service.start(now: now, output: &output)
        }
        let portMapper = startPortMapper(options, port: boundPort, logger: logger) { mapping in
            host.perform { service, output, now in service.portMappingChanged(mapping?.external, now: now, output: &output) }
        }
        defer { portMapper?.shutdown() }
        var statusServer: StatusSocket.Server?
        if options.serveStatus {
            do {
                statusServer = try StatusSocket.serve(id: options.id, group: MultiThreadedEventLoopGroup.singleton) { answer in
                    host.perform { service, _, now in answer(service.statusText(now: now)) }
                }
            } catch {
                // The shell works without it (`natchat --status` will not reach it); said on
                // the log, not the console, whose lines are the chat's.
                logger.warning("natchat --status will not reach this shell: \(error)")
            }
        }
        defer { statusServer?.close() }
        TerminationSignal.onSignal { _ in console.stop() }
        // Tab asks the service on its event loop (and, past the server's roster limit, the
        // service asks the server): the console's thread waits for the answer, briefly.
        console.setPeerCompletion { prefix in
            let answer = Mutex<[String]?>(nil)
            let answered = DispatchSemaphore(value: 0)
            host.perform { service, output, now in
                service.completePeerIDs(prefix: prefix, now: now, output: &output) { ids in
                    answer.withLock { $0 = ids }
                    answered.signal()
                }
            }
            _ = answered.wait(timeout: .now() + completionWait)
            return answer.withLock { $0 } ?? []
        }

        console.run { line in
            let command: Command?
            do {
                command = try Command.parse(line)
            } catch {
                console.show("\(error)")
                return .keepReading
            }
            guard let command else { return .keepReading }
            if command == .exit { return .stop }
            if interactive, case .showList = command {
                // The page fits the terminal as it is now (it may have been resized).
                let pageSize = listPageSize()
                host.perform { service, output, now in
                    service.setListPageSize(pageSize)
                    service.handle(command, now: now, output: &output)
                }
                return .keepReading
            }
            host.perform { service, output, now in service.handle(command, now: now, output: &output) }
            return .keepReading
        }
        if refused.load(ordering: .relaxed) {
            writer.finish()
            console.show("* registration refused; choose another ID with --id")
            return 2
        }
        host.performBlocking { service, output, now in service.leave(now: now, output: &output) }
        writer.finish()
        LineWriter.write("* bye")
        return 0
    }
}

/// Writes the known-peers file on a thread of its own, so that the event loop never waits on
/// the disk: each save replaces the one still waiting, and a failure is reported once per
/// kind of error (the table stays in memory; the next save tries again).
final class KnownPeersWriter: Sendable {
    private let file: KnownPeersFile?
    private let report: @Sendable (String) -> Void
    private let queue = DispatchQueue(label: "natchat.known-peers")
    private let state = Mutex<(pending: [KnownPeers.Record]?, lastError: KnownPeersFile.FileError?)>((nil, nil))

    init(file: KnownPeersFile?, report: @escaping @Sendable (String) -> Void) {
        self.file = file
        self.report = report
    }

    /// Queues `records` to be written (a later call before the write replaces them).
    func save(_ records: [KnownPeers.Record]) {
        guard file != nil else { return }
        let first = state.withLock { state in
            defer { state.pending = records }
            return state.pending == nil
        }
        if first { queue.async { self.write() } }
    }

    /// Waits until what was queued is written.
    func finish() {
        queue.sync {}
    }

    private func write() {
        guard let file, let records = state.withLock({ state in
            defer { state.pending = nil }
            return state.pending
        }) else { return }
        do {
            try file.save(records)
            state.withLock { $0.lastError = nil }
        } catch {
            let isNew = state.withLock { state in
                defer { state.lastError = error }
                return state.lastError != error
            }
            if isNew { report("* known peers not saved: \(error)") }
        }
    }
}
