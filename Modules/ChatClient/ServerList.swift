import AddressDiscovery
import Addressing

/// The servers `--server` names: `HOST[:PORT]`, or several separated by commas. Each host
/// gives every IPv4 address it resolves to, in the resolver's order; an endpoint already
/// listed is not listed again.
public struct ServerList: Hashable, Sendable {
    /// The servers in order of preference (never empty).
    public let endpoints: [Endpoint]
    /// The list as the user wrote it, each entry with its port (`host:port,host:port`): the
    /// known peers' server field, the same whichever server the client is registered with.
    public let name: String

    /// The first server.
    public var first: Endpoint { endpoints[0] }
    /// The servers after the first.
    public var fallbacks: [Endpoint] { Array(endpoints.dropFirst()) }

    /// Why a server list was not taken.
    public enum ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        /// Nothing was given, or an entry between commas is empty.
        case emptyEntry
        /// An entry's port is not a number in 1...65535.
        case badPort(String)
        /// A host resolved to no IPv4 address.
        case unresolved(String)

        public var description: String {
            switch self {
            case .emptyEntry: "empty server entry (expected HOST[:PORT][,HOST[:PORT]...])"
            case .badPort(let entry): "bad port in server '\(entry)' (1-65535)"
            case .unresolved(let host): "cannot resolve '\(host)' to an IPv4 address"
            }
        }
    }

    /// Parses `text`; an entry without a port takes `defaultPort`. `resolve` gives a host's
    /// IPv4 addresses (``HostResolver/resolveAllIPv4(_:)`` by default; tests pass their own).
    public init(parsing text: String, defaultPort: UInt16,
                resolve: (String) -> [IPv4Address] = HostResolver.resolveAllIPv4) throws(ParseError) {
        var endpoints: [Endpoint] = []
        var names: [String] = []
        for rawEntry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let entry = rawEntry.trimmingSpaces()
            guard !entry.isEmpty else { throw .emptyEntry }
            var host = entry
            var port = defaultPort
            if let colon = entry.lastIndex(of: ":") {
                host = String(entry[..<colon])
                guard let parsed = UInt16(entry[entry.index(after: colon)...]), parsed != 0 else { throw .badPort(entry) }
                port = parsed
            }
            guard !host.isEmpty else { throw .emptyEntry }
            let addresses = resolve(host)
            guard !addresses.isEmpty else { throw .unresolved(host) }
            for address in addresses {
                let endpoint = Endpoint(address: address, port: port)
                if !endpoints.contains(endpoint) { endpoints.append(endpoint) }
            }
            names.append("\(host):\(port)")
        }
        guard !endpoints.isEmpty else { throw .emptyEntry }
        self.endpoints = endpoints
        name = names.joined(separator: ",")
    }
}

extension Substring {
    /// Without the spaces and tabs at either end.
    fileprivate func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
