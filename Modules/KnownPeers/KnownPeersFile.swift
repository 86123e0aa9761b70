#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `known_peers` file: the thin I/O driver around ``KnownPeersFormat``.
///
/// - ``load()`` reads the records, or throws: a line it cannot read is an error (the caller
///   should refuse to start rather than overwrite the user's file without that line).
/// - ``save(_:)`` writes atomically: the text goes to a temporary file in the same folder
///   (mode 0600), is flushed to disk, and is renamed over the file; on any failure the old
///   file is left as it was. The folder is created owner-only (0700) when missing. Records
///   that another process wrote to the file meanwhile are kept (``KnownPeers/adopt(missingFrom:)``).
///
/// Blocking calls: run them off an event loop.
public struct KnownPeersFile: Hashable, Sendable {
    /// Why the file could not be used.
    public enum FileError: Error, Hashable, Sendable, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        /// A line is not a record (see ``KnownPeersFormat/parse(_:)``).
        case malformed(path: String, KnownPeersFormat.ParseError)
        /// Others may write it (group or world writable): they could change the pins.
        case tooOpen(path: String)
        case unwritable(path: String, errno: Int32)

        public var description: String {
            switch self {
            case .unreadable(let path, let code):
                "cannot read known peers file \(path): \(String(cString: strerror(code)))"
            case .malformed(let path, let error):
                "known peers file \(path), \(error); fix or remove that line (or move the file away, or use --known-peers none)"
            case .tooOpen(let path):
                "known peers file \(path) is writable by others; chmod 600 it"
            case .unwritable(let path, let code):
                "cannot write known peers file \(path): \(String(cString: strerror(code)))"
            }
        }
    }

    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// `$XDG_STATE_HOME/natchat/known_peers`, else `~/.local/state/natchat/known_peers`;
    /// `nil` when neither variable is set.
    public static func defaultPath() -> String? {
        let environment = { (name: String) -> String? in getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        if let state = environment("XDG_STATE_HOME") { return state + "/natchat/known_peers" }
        if let home = environment("HOME") { return home + "/.local/state/natchat/known_peers" }
        return nil
    }

    /// The records in the file; none when it does not exist yet.
    public func load() throws(FileError) -> [KnownPeers.Record] {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            if code == ENOENT { return [] }
            throw .unreadable(path: path, errno: code)
        }
        guard info.st_mode & 0o022 == 0 else { throw .tooOpen(path: path) }
        let text = try readText()
        do {
            return try KnownPeersFormat.parse(text)
        } catch {
            throw .malformed(path: path, error)
        }
    }

    /// Writes `records`, and those the file holds that `records` lacks, atomically.
    /// Refuses (throws) when the file as it is now cannot be read: it is never overwritten
    /// with less than it holds.
    public func save(_ records: [KnownPeers.Record]) throws(FileError) {
        var table = KnownPeers(records: records)
        table.adopt(missingFrom: try load())
        try makeFolder()
        let bytes = Array(KnownPeersFormat.encode(table.allRecords).utf8)
        let temporary = temporaryPath
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else { throw .unwritable(path: temporary, errno: errno) }
        var written = 0
        while written < bytes.count {
            let count = bytes[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                let code = errno
                close(descriptor)
                unlink(temporary)
                throw .unwritable(path: temporary, errno: code)
            }
            written += count
        }
        guard fsync(descriptor) == 0, close(descriptor) == 0 else {
            let code = errno
            unlink(temporary)
            throw .unwritable(path: temporary, errno: code)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw .unwritable(path: path, errno: code)
        }
        // The rename itself must reach the disk too.
        let folder = open(folderPath, O_RDONLY)
        if folder >= 0 {
            _ = fsync(folder)
            close(folder)
        }
    }

    /// Where ``save(_:)`` writes before it renames: beside the file, named after the process.
    public var temporaryPath: String {
        let slash = path.lastIndex(of: "/")
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return folderPath + "/." + name + ".tmp-\(getpid())"
    }

    var folderPath: String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Creates the folders on the way to the file, owner-only, as needed.
    private func makeFolder() throws(FileError) {
        guard path.contains("/") else { return }
        var folder = path.hasPrefix("/") ? "" : "."
        for component in folderPath.split(separator: "/") {
            folder += "/" + component
            if mkdir(folder, 0o700) != 0, errno != EEXIST { throw .unwritable(path: folder, errno: errno) }
        }
    }

    private func readText() throws(FileError) -> String {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { throw .unreadable(path: path, errno: errno) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw .unreadable(path: path, errno: errno) }
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
