import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PostgresStore {
    /// Where the database is and how to log in: what `--store postgres://...` (with
    /// `--store-password-file`, and libpq's environment variables) says.
    ///
    /// ``parse(_:passwordFile:environment:)`` reads the URL forms libpq reads:
    ///
    /// - `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (or `postgresql://`; an IPv6 address in
    ///   brackets, `[::1]`);
    /// - a Unix-domain socket as libpq names one: a host that is a folder, in the query
    ///   (`postgres://USER@/DB?host=/run/postgresql`) or percent-encoded in the URL
    ///   (`postgres://USER@%2Frun%2Fpostgresql/DB`); the socket file is `DIR/.s.PGSQL.PORT`;
    /// - the query parameters `host`, `port`, `user`, `password`, `dbname` (each overrides the
    ///   same part of the URL), `connect_timeout` (seconds: ``timeout``) and `sslmode`
    ///   (`disable`, `allow` or `prefer` only: the store connects without TLS).
    ///
    /// What the URL leaves out is filled in this order (the first that says wins):
    /// 1. the URL (its query parameters first, then its other parts);
    /// 2. for the password only, the first line of the password file;
    /// 3. libpq's environment variables `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
    ///    `PGPASSWORD` (empty ones count as unset);
    /// 4. libpq's defaults: the socket folder `/var/run/postgresql` (Debian's), port 5432, the
    ///    user running the process, a database named after the user, no password.
    ///
    /// TLS is not supported: the store connects in clear, which is what a database on the same
    /// host (a Unix socket, loopback) or on a private network needs. Put a TLS tunnel in
    /// front of a database elsewhere.
    ///
    /// The description (``redactedURL``) never shows the password.
    public struct Settings: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
        /// How the store reaches the server.
        public enum Address: Hashable, Sendable {
            /// TCP to `host` (a name or an IP address) and `port`.
            case tcp(host: String, port: Int)
            /// The Unix-domain socket `directory/.s.PGSQL.port` (libpq's naming).
            case socket(directory: String, port: Int)

            /// The socket file's path (`nil` for TCP).
            public var socketPath: String? {
                guard case .socket(let directory, let port) = self else { return nil }
                return (directory.hasSuffix("/") ? directory : directory + "/") + ".s.PGSQL.\(port)"
            }

            /// The port: the TCP port, or the number in the socket's name.
            public var port: Int {
                switch self {
                case .tcp(_, let port), .socket(_, let port): port
                }
            }
        }

        /// The server's address.
        public var address: Address
        /// The role to log in as.
        public var user: String
        /// The password (`nil`: none is sent; the server's `trust` or `peer` rules apply).
        public var password: String?
        /// The database.
        public var database: String
        /// The longest any one call waits for the database (connecting included), after which
        /// it fails with ``StoreError``: a database that is down or unreachable never hangs
        /// a caller. Default 5 s.
        public var timeout: Duration
        /// The most connections the store's pool opens (the notification listener takes one
        /// more). Default 8.
        public var maximumConnections: Int

        /// The default socket folder when nothing names a host (Debian's, libpq's default there).
        public static let defaultSocketDirectory = "/var/run/postgresql"
        /// The default port.
        public static let defaultPort = 5432

        /// Settings given part by part (no URL, no environment).
        public init(address: Address, user: String, password: String? = nil, database: String,
                    timeout: Duration = .seconds(5), maximumConnections: Int = 8) {
            self.address = address
            self.user = user
            self.password = password
            self.database = database
            self.timeout = timeout
            self.maximumConnections = maximumConnections
        }

        /// The settings as a URL without the password: what the server prints
        /// (`postgres://natchat@db.example:5432/natchat`,
        /// `postgres://natchat@:5432/natchat?host=/run/postgresql` for a socket).
        public var redactedURL: String {
            let user = Self.percentEncoded(self.user)
            let database = Self.percentEncoded(self.database)
            switch address {
            case .tcp(let host, let port):
                let shown = host.contains(":") ? "[\(host)]" : host
                return "postgres://\(user)@\(shown):\(port)/\(database)"
            case .socket(let directory, let port):
                return "postgres://\(user)@:\(port)/\(database)?host=\(Self.percentEncoded(directory, keeping: "/"))"
            }
        }

        /// ``redactedURL``: never the password.
        public var description: String { redactedURL }
        /// ``redactedURL``: never the password.
        public var debugDescription: String { "PostgresStore.Settings(\(redactedURL)\(password == nil ? "" : ", with a password"))" }

        /// Reads a `--store` URL, the password file and the environment (the precedence is in
        /// the type's description).
        ///
        /// - Parameters:
        ///   - url: `postgres://...` or `postgresql://...`.
        ///   - passwordFile: a file whose first line is the password (`--store-password-file`);
        ///     it must be readable when given, even if the URL has a password.
        ///   - environment: the process's environment (a parameter so tests can vary it).
        /// - Throws: ``PostgresSettingsError``, which never quotes the password.
        public static func parse(_ url: String, passwordFile: String? = nil,
                                 environment: [String: String] = ProcessInfo.processInfo.environment)
            throws(PostgresSettingsError) -> Settings {
            var parts = try URLParts(url)
            if let passwordFile {
                let filePassword = try readPasswordFile(passwordFile)
                if parts.password == nil { parts.password = filePassword }
            }
            func env(_ name: String) -> String? {
                guard let value = environment[name], !value.isEmpty else { return nil }
                return value
            }
            let host = parts.host ?? env("PGHOST") ?? defaultSocketDirectory
            let port: Int
            if let given = parts.port {
                port = given
            } else if let text = env("PGPORT") {
                guard let number = Self.port(text) else {
                    throw .badEnvironment(name: "PGPORT", reason: "'\(text)' is not a port (1-65535)")
                }
                port = number
            } else {
                port = defaultPort
            }
            guard let user = parts.user ?? env("PGUSER") ?? processUser() else {
                throw .badURL(reason: "no user: put one in the URL (postgres://USER@...) or set PGUSER")
            }
            let database = parts.database ?? env("PGDATABASE") ?? user
            let password = parts.password ?? env("PGPASSWORD")
            if host.contains(",") {
                throw .badURL(reason: "several hosts ('\(host)') are not supported; name one")
            }
            let address: Address = host.hasPrefix("/") ? .socket(directory: host, port: port) : .tcp(host: host, port: port)
            var settings = Settings(address: address, user: user, password: password, database: database)
            if let timeout = parts.timeout { settings.timeout = timeout }
            return settings
        }

        // MARK: Parsing

        /// What the URL itself says (nil: not said).
        struct URLParts {
            var user: String?
            var password: String?
            var host: String?
            var port: Int?
            var database: String?
            var timeout: Duration?

            init(_ url: String) throws(PostgresSettingsError) {
                let lowered = url.lowercased()
                let rest: Substring
                if lowered.hasPrefix("postgres://") {
                    rest = url.dropFirst("postgres://".count)
                } else if lowered.hasPrefix("postgresql://") {
                    rest = url.dropFirst("postgresql://".count)
                } else {
                    throw .badURL(reason: "it must start with postgres:// or postgresql://")
                }
                guard !rest.contains("#") else { throw .badURL(reason: "a fragment (#...) has no meaning here") }
                guard !rest.contains(where: { $0.isWhitespace }) else {
                    throw .badURL(reason: "it contains spaces (percent-encode them: %20)")
                }
                let main: Substring
                let query: Substring?
                if let mark = rest.firstIndex(of: "?") {
                    main = rest[..<mark]
                    query = rest[rest.index(after: mark)...]
                } else {
                    main = rest
                    query = nil
                }
                let authority: Substring
                if let slash = main.firstIndex(of: "/") {
                    authority = main[..<slash]
                    let path = main[main.index(after: slash)...]
                    guard !path.contains("/") else { throw .badURL(reason: "the path must be one database name (/DB)") }
                    if !path.isEmpty { database = try Self.decoded(path, what: "the database name") }
                } else {
                    authority = main
                }
                var hostPort = authority
                if let at = authority.lastIndex(of: "@") {
                    let userInfo = authority[..<at]
                    hostPort = authority[authority.index(after: at)...]
                    if let colon = userInfo.firstIndex(of: ":") {
                        let name = userInfo[..<colon]
                        if !name.isEmpty { user = try Self.decoded(name, what: "the user name") }
                        // The password's text is never quoted in an error.
                        password = try Self.decoded(userInfo[userInfo.index(after: colon)...], what: "the password")
                    } else if !userInfo.isEmpty {
                        user = try Self.decoded(userInfo, what: "the user name")
                    }
                }
                try parseHostPort(hostPort)
                if let query, !query.isEmpty {
                    for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
                        guard let equals = pair.firstIndex(of: "=") else {
                            throw .badURL(reason: "the query parameter '\(pair)' has no value (name=value)")
                        }
                        let name = String(pair[..<equals])
                        let rawValue = pair[pair.index(after: equals)...]
                        let value = try Self.decoded(rawValue, what: name == "password" ? "the password" : "the parameter \(name)")
                        try apply(name: name, value: value)
                    }
                }
            }

            mutating func parseHostPort(_ hostPort: Substring) throws(PostgresSettingsError) {
                guard !hostPort.isEmpty else { return }
                let hostText: Substring
                var portText: Substring?
                if hostPort.hasPrefix("[") {
                    guard let close = hostPort.firstIndex(of: "]") else {
                        throw .badURL(reason: "an IPv6 address must end with ']'")
                    }
                    hostText = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
                    let after = hostPort[hostPort.index(after: close)...]
                    if !after.isEmpty {
                        guard after.hasPrefix(":") else { throw .badURL(reason: "expected ':PORT' after ']'") }
                        portText = after.dropFirst()
                    }
                } else if let colon = hostPort.firstIndex(of: ":") {
                    hostText = hostPort[..<colon]
                    portText = hostPort[hostPort.index(after: colon)...]
                } else {
                    hostText = hostPort
                }
                if !hostText.isEmpty { host = try Self.decoded(hostText, what: "the host") }
                if let portText, !portText.isEmpty {
                    guard let number = PostgresStore.Settings.port(String(portText)) else {
                        throw .badURL(reason: "the port '\(portText)' is not a number from 1 to 65535")
                    }
                    port = number
                }
            }

            mutating func apply(name: String, value: String) throws(PostgresSettingsError) {
                switch name {
                case "host": if !value.isEmpty { host = value }
                case "port":
                    guard let number = PostgresStore.Settings.port(value) else {
                        throw .badURL(reason: "the port '\(value)' is not a number from 1 to 65535")
                    }
                    port = number
                case "user": if !value.isEmpty { user = value }
                case "password": password = value
                case "dbname": if !value.isEmpty { database = value }
                case "connect_timeout":
                    guard let seconds = Int(value), seconds > 0, seconds <= 3600 else {
                        throw .badURL(reason: "connect_timeout '\(value)' is not a number of seconds from 1 to 3600")
                    }
                    timeout = .seconds(seconds)
                case "sslmode":
                    switch value {
                    case "disable", "allow", "prefer": break
                    default:
                        throw .badURL(reason: "sslmode=\(value): TLS is not supported; use sslmode=disable (a local socket, loopback or a private network)")
                    }
                default:
                    throw .badURL(reason: "the query parameter '\(name)' is not one natchat knows (host, port, user, password, dbname, connect_timeout, sslmode)")
                }
            }

            /// Percent-decodes `text` (UTF-8); a malformed escape is an error naming `what`.
            static func decoded(_ text: Substring, what: String) throws(PostgresSettingsError) -> String {
                guard text.contains("%") else { return String(text) }
                var bytes: [UInt8] = []
                var iterator = Array(text.utf8).makeIterator()
                while let byte = iterator.next() {
                    guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
                    guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                        throw .badURL(reason: "\(what) has a bad percent escape (% must be followed by two hex digits)")
                    }
                    bytes.append(high << 4 | low)
                }
                guard let decoded = String(validating: bytes, as: UTF8.self) else {
                    throw .badURL(reason: "\(what) is not UTF-8 once percent-decoded")
                }
                return decoded
            }

            static func hexValue(_ byte: UInt8) -> UInt8? {
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
                default: nil
                }
            }
        }

        static func port(_ text: String) -> Int? {
            guard let number = Int(text), (1...65535).contains(number) else { return nil }
            return number
        }

        /// The first line of the password file (without its line ending).
        static func readPasswordFile(_ path: String) throws(PostgresSettingsError) -> String {
            guard !path.isEmpty else { throw .passwordFile(path: path, reason: "the path is empty") }
            guard let data = FileManager.default.contents(atPath: path) else {
                let reason = FileManager.default.fileExists(atPath: path) ? "cannot read it" : "no such file"
                throw .passwordFile(path: path, reason: reason)
            }
            guard let text = String(data: data, encoding: .utf8) else {
                throw .passwordFile(path: path, reason: "it is not UTF-8 text")
            }
            // "\r\n" is one Character in Swift: up to the first line break of any kind.
            let line = String(text.prefix { !$0.isNewline })
            guard !line.isEmpty else { throw .passwordFile(path: path, reason: "its first line is empty") }
            return line
        }

        /// The name of the user running the process (libpq's default user).
        static func processUser() -> String? {
            guard let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name else { return nil }
            let user = String(cString: name)
            return user.isEmpty ? nil : user
        }

        /// Percent-encodes what could be misread in a URL (for ``redactedURL``).
        static func percentEncoded(_ text: String, keeping extra: String = "") -> String {
            var result = ""
            for byte in text.utf8 {
                let scalar = Unicode.Scalar(byte)
                if (byte < 0x80 && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)))
                    || "-._~".unicodeScalars.contains(scalar) || extra.unicodeScalars.contains(scalar) {
                    result.unicodeScalars.append(scalar)
                } else {
                    result += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
                }
            }
            return result
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Why `--store postgres://...`, its password file or the environment cannot be used. No case
/// ever holds the password.
public enum PostgresSettingsError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The URL is malformed or asks for something the store does not do (TLS, several hosts).
    case badURL(reason: String)
    /// The password file cannot be used.
    case passwordFile(path: String, reason: String)
    /// An environment variable (`PGPORT`, ...) holds a value that cannot be used.
    case badEnvironment(name: String, reason: String)

    /// What natchat-server prints.
    public var description: String {
        switch self {
        case .badURL(let reason): "bad PostgreSQL URL: \(reason)"
        case .passwordFile(let path, let reason): "cannot use the password file \(path): \(reason)"
        case .badEnvironment(let name, let reason): "bad \(name) in the environment: \(reason)"
        }
    }
}
