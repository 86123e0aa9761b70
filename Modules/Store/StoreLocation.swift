#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where natchat-server keeps its durable state: the value of `--store`, and the default
/// file when the option is not given.
public enum StoreLocation: Hashable, Sendable, CustomStringConvertible {
    /// `--store memory`: nothing is written (``MemoryStore``).
    case memory
    /// An SQLite file.
    case file(path: String)
    /// A PostgreSQL database (`postgres://...` or `postgresql://...`, as given; the
    /// PostgresStore module reads it). Its description hides the password.
    case postgres(url: String)

    /// The store's file when `--store` is not given:
    /// - `$STATE_DIRECTORY/natchat-server.sqlite` when `STATE_DIRECTORY` is set (systemd's
    ///   `StateDirectory=`; when it lists several colon-separated folders, the first);
    /// - else `$XDG_STATE_HOME/natchat-server/natchat-server.sqlite` (an absolute
    ///   `XDG_STATE_HOME` only, as the XDG base directory specification says);
    /// - else `$HOME/.local/state/natchat-server/natchat-server.sqlite`, with the home folder
    ///   from the user database when `HOME` is not set, and the working folder
    ///   (`natchat-server.sqlite`) when there is none.
    ///
    /// Empty variables count as unset. `environment` is the process's environment
    /// (`ProcessInfo.processInfo.environment`), a parameter so that tests can vary it.
    public static func defaultPath(environment: [String: String]) -> String {
        func value(_ name: String) -> String? {
            guard let text = environment[name], !text.isEmpty else { return nil }
            return text
        }
        if let directories = value("STATE_DIRECTORY"),
           let first = directories.split(separator: ":", omittingEmptySubsequences: true).first {
            return joined(String(first), fileName)
        }
        if let state = value("XDG_STATE_HOME"), state.hasPrefix("/") {
            return joined(joined(state, folderName), fileName)
        }
        if let home = value("HOME") ?? userHome() {
            return joined(joined(home, ".local/state/" + folderName), fileName)
        }
        return fileName
    }

    /// Reads a `--store` value: `memory`, a PostgreSQL URL (`postgres://...` or
    /// `postgresql://...`, any case), or a file path. Another URL (any `scheme://`) is refused
    /// with ``StoreLocationError/unsupported(scheme:)`` rather than taken for a file named
    /// after it. The URL itself is checked when the store is opened.
    public static func parse(_ value: String) throws(StoreLocationError) -> StoreLocation {
        if value == "memory" { return .memory }
        if value.isEmpty { throw .empty }
        if let scheme = urlScheme(value) {
            guard ["postgres", "postgresql"].contains(scheme.lowercased()) else { throw .unsupported(scheme: scheme) }
            return .postgres(url: value)
        }
        return .file(path: value)
    }

    /// What the server prints at start: `memory`, the file's path, or the URL without its
    /// password.
    public var description: String {
        switch self {
        case .memory: "memory"
        case .file(let path): path
        case .postgres(let url): Self.redacted(url)
        }
    }

    /// `url` without a password: the `:PASSWORD` of its user part, and the value of a
    /// `password=` query parameter, are left out.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://") else { return url }
        var rest = url[schemeEnd.upperBound...]
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[mark...]
            rest = rest[..<mark]
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = rest[..<authorityEnd]
        let path = rest[authorityEnd...]
        if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
            authority = authority[..<colon] + authority[at...]
        }
        if !query.isEmpty {
            let parameters = query.dropFirst().split(separator: "&", omittingEmptySubsequences: false)
                .filter { !$0.lowercased().hasPrefix("password=") }
            query = parameters.isEmpty ? "" : "?" + parameters.joined(separator: "&")
        }
        return String(url[..<schemeEnd.upperBound]) + authority + path + query
    }

    static let fileName = "natchat-server.sqlite"
    static let folderName = "natchat-server"

    static func joined(_ folder: String, _ name: String) -> String {
        folder.hasSuffix("/") ? folder + name : folder + "/" + name
    }

    /// `postgres` in `postgres://...`: letters first, then letters, digits, `+`, `-` or `.`.
    static func urlScheme(_ value: String) -> String? {
        guard let range = value.range(of: "://") else { return nil }
        let scheme = value[..<range.lowerBound]
        func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        guard let first = scheme.unicodeScalars.first, isLetter(first),
              scheme.unicodeScalars.allSatisfy({ isLetter($0) || ("0"..."9").contains($0) || "+-.".unicodeScalars.contains($0) })
        else { return nil }
        return String(scheme)
    }

    /// The home folder from the user database (what a shell's `~` means when `HOME` is unset).
    static func userHome() -> String? {
        guard let entry = getpwuid(getuid()), let directory = entry.pointee.pw_dir else { return nil }
        let home = String(cString: directory)
        return home.isEmpty ? nil : home
    }
}

/// A `--store` value that names no store natchat can open.
public enum StoreLocationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `--store ""`.
    case empty
    /// A URL of a scheme natchat has no store for (`redis://...`).
    case unsupported(scheme: String)

    /// What natchat-server prints when it refuses the option.
    public var description: String {
        switch self {
        case .empty:
            "--store needs a value: a file path, a postgres:// URL, or memory"
        case .unsupported(let scheme):
            "--store \(scheme)://...: not a store natchat knows; use a file path, a postgres:// URL, or memory"
        }
    }
}
