/// Where the server's admin HTTP listener binds (`--admin HOST:PORT`): `/metrics`
/// (Prometheus), `/healthz` and the status page `/`.
public struct AdminEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// The address to bind: `127.0.0.1` by default, so that only the host itself sees the
    /// figures unless the operator says otherwise.
    public var host: String
    /// The TCP port (0: any free port, for tests).
    public var port: Int
    /// Whether the operator named it (`--admin`) rather than leaving the default: a named
    /// address that cannot be bound stops the server; the default only logs a warning, so a
    /// second server on one host still starts.
    public var isExplicit: Bool

    /// The default, `127.0.0.1:10090`.
    public static let defaultPort = 10090

    public init(host: String = "127.0.0.1", port: Int = AdminEndpoint.defaultPort, isExplicit: Bool = false) {
        self.host = host
        self.port = port
        self.isExplicit = isExplicit
    }

    /// Parses `--admin`: `HOST:PORT`, `:PORT` (on 127.0.0.1) or `off` (`nil`).
    public static func parse(_ text: String, isExplicit: Bool = true) throws(ParseError) -> AdminEndpoint? {
        if text == "off" { return nil }
        guard let colon = text.lastIndex(of: ":") else { throw ParseError(text: text) }
        let host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { throw ParseError(text: text) }
        return AdminEndpoint(host: host.isEmpty ? "127.0.0.1" : host, port: port, isExplicit: isExplicit)
    }

    /// `--admin` was neither `off` nor `HOST:PORT`.
    public struct ParseError: Error, CustomStringConvertible {
        public var text: String
        public var description: String { "'\(text)' is neither HOST:PORT nor off" }
    }

    public var description: String { "\(host):\(port)" }
}
