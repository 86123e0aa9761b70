import AddressDiscovery
import Addressing
import ArgumentParser
import ChatClient
import LineEditor
import Logging
import MonotonicTime

/// `natchat`: the chat shell. All of the work is in the ChatClient module.
@main
struct Natchat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "natchat",
        abstract: "Chat peer to peer over UDP, finding peers through a natchat rendezvous server.",
        discussion: """
            Commands: @show_list [<id prefix>] [<page>], @chat <id> <text>, @whois <id>, @trust <id>, @ping <id>, @status, \
            @exit, @help. A long list is shown a page at a time. @status shows, like `tailscale status`, your ID, key, public \
            endpoint, NAT and the server's round trip, then each peer's path (private, direct or relayed), round trip, when \
            it was last heard and why a relayed peer is relayed; @ping <id> measures the round trip over the current path. \
            `natchat --status [--id ID]` prints the running shell's @status from another terminal or a script (the shell \
            serves it on an owner-only socket in $XDG_RUNTIME_DIR/natchat, else ~/.local/state/natchat). On a terminal the shell has \
            line editing, history and Tab completion of commands and peer IDs; with stdin from a \
            pipe it reads one command per line and end of input acts as @exit.
            """)

    @Option(help: "Your client ID (1-32 bytes; no space, '@', ':' or control characters). Asked for when missing.")
    var id: String?

    @Option(help: "Rendezvous server: HOST[:PORT], or several servers sharing one database, comma-separated (HOST[:PORT],HOST[:PORT],...); a host with several IPv4 addresses gives each. The client registers with the first that answers and moves to the next when it stops answering (within 30 s, keeping its ID). Asked for when missing.")
    var server: String?

    @Option(help: "Rendezvous server UDP port (for servers given without one).")
    var serverPort: Int = 10080

    @Option(help: "Local UDP port (0 picks any free port).")
    var port: Int = 10081

    @Option(help: "Local address to bind (0.0.0.0: all).")
    var bind: String = "0.0.0.0"

    @Option(help: "Seconds between keep-alives to the server.")
    var keepaliveInterval: Double = 10

    @Option(help: "UDP port that same-NAT peers listen on (the classic protocol sends only their private IP).")
    var peerPort: Int = 10081

    @Option(help: "History file (default: $XDG_STATE_HOME/natchat/history or ~/.local/state/natchat/history).")
    var historyFile: String?

    @Option(help: "Identity key file, created on first run with owner-only permissions (default: $XDG_CONFIG_HOME/natchat/identity or ~/.config/natchat/identity). 'none': a key for this run only.")
    var identity: String?

    @Option(help: "Known peers file: each peer's key, remembered per server; a peer that shows another key is held until @trust (default: $XDG_STATE_HOME/natchat/known_peers or ~/.local/state/natchat/known_peers). 'none': remember for this run only.")
    var knownPeers: String?

    @Flag(help: "Probe the NAT instead of chatting: ask --server (any STUN server) for this socket's mapped address and, with --alt-port, whether the mapping is endpoint-independent.")
    var probe = false

    @Option(help: "With --probe: the server's second (STUN-only) port; 0 for a plain STUN server.")
    var altPort: Int = 10082

    @Flag(help: "Release your ID's claim on the server (registers with your identity key, asks, leaves): any key may register the ID afterwards.")
    var releaseId = false

    @Flag(help: "Hand your ID's claim to a new identity key: registers with the current key, asks the server, and on its answer keeps the old key as IDENTITY.old and the new one as IDENTITY.")
    var rotateIdentity = false

    @Flag(help: "Print the @status of the natchat shell running for --id (which may be left out when one shell is running), then exit: 0 when it answered, 1 when no shell is running.")
    var status = false

    @Flag(help: "Speak only the seed's classic protocol (no hole punching, relay or acknowledgements).")
    var classic = false

    @Flag(help: "Do not ask the gateway for a port mapping (PCP, NAT-PMP, UPnP IGD) of the chat port.")
    var noPortMapping = false

    @Option(help: ArgumentHelp("Lifetime asked for a PCP or NAT-PMP port mapping, seconds (renewed at half of it, at most every 2 minutes).",
                               visibility: .hidden))
    var portMappingLifetime: Int = 7200

    @Option(help: "Diagnostics level on stderr: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "warning"

    @Option(help: "UDP sockets to open for port probing when your NAT is symmetric and a peer's is a cone (clamped to the file-descriptor limit); 0 turns port probing off.")
    var probeSockets: Int = 256

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard (1...65535).contains(serverPort) else { throw ValidationError("--server-port must be 1...65535") }
        guard (1...65535).contains(peerPort) else { throw ValidationError("--peer-port must be 1...65535") }
        guard keepaliveInterval > 0, keepaliveInterval < 86_400 else { throw ValidationError("--keepalive-interval must be in (0, 86400) seconds") }
        guard (1...86_400).contains(portMappingLifetime) else { throw ValidationError("--port-mapping-lifetime must be 1...86400 seconds") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        if let id, let violation = ClientID.violation(in: id) { throw ValidationError("invalid --id: \(violation)") }
        guard !(releaseId && rotateIdentity) else { throw ValidationError("--release-id and --rotate-identity exclude each other") }
        guard !(status && (probe || releaseId || rotateIdentity)) else {
            throw ValidationError("--status excludes --probe, --release-id and --rotate-identity")
        }
        guard !((releaseId || rotateIdentity) && (classic || probe)) else {
            throw ValidationError("--release-id and --rotate-identity need natchat/2 (not --classic or --probe)")
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "natchat.client")
        if probe {
            try runProbe(logger: logger)
            return
        }
        if status {
            let code = ChatClientRunner.runStatusQuery(id: try id.map { try ClientID($0) })
            if code != 0 { throw ExitCode(code) }
            return
        }
        guard let clientID = try id.map({ try ClientID($0) }) ?? Self.ask("Enter client ID: ", parse: { text in
            if let violation = ClientID.violation(in: text) { return .failure("invalid ID: \(violation)") }
            return (try? ClientID(text)).map { .success($0) } ?? .failure("invalid ID")
        }) else { throw ExitCode(1) }
        let defaultServerPort = UInt16(serverPort)
        let servers: ServerList
        if let server {
            do {
                servers = try ServerList(parsing: server, defaultPort: defaultServerPort)
            } catch {
                LineWriter.write("natchat: --server: \(error)")
                throw ExitCode(1)
            }
        } else {
            guard let asked = Self.ask("Enter server IP address: ", parse: { text in
                do throws(ServerList.ParseError) {
                    return .success(try ServerList(parsing: text, defaultPort: defaultServerPort))
                } catch {
                    return .failure("\(error)")
                }
            }) else {
                LineWriter.write("natchat: no server given")
                throw ExitCode(1)
            }
            servers = asked
        }
        var options = ChatClientRunner.Options(
            id: clientID, server: servers.first,
            bindAddress: bind, port: port, keepAliveInterval: .fractionalSeconds(keepaliveInterval),
            peerPrivatePort: UInt16(peerPort), historyPath: historyFile ?? ChatClientRunner.defaultHistoryPath())
        options.fallbackServers = servers.fallbacks
        options.offerExtended = !classic
        if let identity { options.identityPath = identity == "none" ? nil : identity }
        if let knownPeers { options.knownPeersPath = knownPeers == "none" ? nil : knownPeers }
        options.serverName = servers.name
        options.portMapping = !noPortMapping
        options.portMappingLifetime = UInt32(portMappingLifetime)
        if releaseId { options.claimChange = .release }
        if rotateIdentity { options.claimChange = .rotate }
        options.probeSockets = probeSockets
        let status = ChatClientRunner.run(options, logger: logger)
        if status != 0 { throw ExitCode(status) }
    }

    func runProbe(logger: Logger) throws {
        guard let server, let address = HostResolver.resolveIPv4(server) else {
            throw ValidationError("--probe needs --server HOST (a natchat-server or any STUN server)")
        }
        guard (0...65535).contains(altPort) else { throw ValidationError("--alt-port must be 0...65535") }
        // The gateway's mapping protocols, asked in parallel with the STUN probe (≤ 2.5 s); not
        // from a loopback bind address (no gateway is involved there).
        let portMapping = noPortMapping || bind.hasPrefix("127.") ? nil : ProbeRunner.startPortMappingProbe(logger: logger)
        let outcome = try ProbeRunner.run(server: Endpoint(address: address, port: UInt16(serverPort)),
                                          alternatePort: UInt16(altPort), bindAddress: bind, port: port == 10081 ? 0 : port,
                                          logger: logger)
        LineWriter.write("mapped address: \(outcome.primaryMapping.map { "\($0)" } ?? "no answer")")
        if altPort != 0 {
            LineWriter.write("mapped address at alternate port: \(outcome.alternateMapping.map { "\($0)" } ?? "no answer")")
        }
        LineWriter.write("NAT: \(outcome.kind)")
        if outcome.kind == .endpointIndependent, altPort != 0 {
            // From a fresh socket: does an unsolicited packet make the router remap a flow?
            let remap = RemapProbeRunner.run(primary: Endpoint(address: address, port: UInt16(serverPort)),
                                             alternate: Endpoint(address: address, port: UInt16(altPort)),
                                             bindAddress: bind, logger: logger)
            LineWriter.write(RemapProbeRunner.probeLine(remap))
        }
        if let portMapping { LineWriter.write(portMapping.line()) }
        if outcome.primaryMapping == nil { throw ExitCode(3) }
    }

    enum Answer<Value> {
        case success(Value)
        case failure(String)
    }

    /// The seed's prompts: asks on stdout, reads a line from stdin; asks again (at most 5
    /// times) while the answer is invalid; `nil` at end of input.
    static func ask<Value>(_ prompt: String, parse: (String) -> Answer<Value>) -> Value? {
        for _ in 0..<5 {
            LineWriter.writeRaw(prompt)
            guard let line = readLine(strippingNewline: true) else { return nil }
            switch parse(line.trimmingCharacters(in: " \t")) {
            case .success(let value): return value
            case .failure(let why): LineWriter.write(why)
            }
        }
        return nil
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let isTrimmed: (Character) -> Bool = { set.contains($0) }
        guard let first = firstIndex(where: { !isTrimmed($0) }), let last = lastIndex(where: { !isTrimmed($0) }) else { return "" }
        return String(self[first...last])
    }
}
