#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Addressing
import NIOCore
import NIOPosix

/// The running shell's status on a Unix domain socket, for `natchat --status` (scripts, a
/// second terminal): whoever connects gets the text `@status` prints, then the socket closes.
/// One answer per connection, nothing read, so a client cannot make the shell buffer or wait.
///
/// The socket is owner-only: its folder is made 0700 (and refused when another user owns
/// it), the socket 0600. It lives at `$XDG_RUNTIME_DIR/natchat/<id>.sock`, else
/// `~/.local/state/natchat/<id>.sock`; it is removed when the shell ends, and one left by a
/// run that crashed (nobody answers on it) is replaced.
public enum StatusSocket {
    /// Why the status socket could not be served or asked.
    public enum Failure: Error, Hashable, Sendable, CustomStringConvertible {
        /// Neither `XDG_RUNTIME_DIR` nor `HOME` is set.
        case noFolder
        /// The folder could not be made owner-only, or belongs to another user.
        case unsafeFolder(String)
        /// The path is longer than a Unix socket address holds.
        case pathTooLong(String)
        /// Another shell with this ID answers on the socket already.
        case inUse(String)
        /// No shell answers for this ID (or none at all).
        case notRunning(String?)
        /// Several shells are running: `--id` must choose one.
        case several([String])
        /// The socket could not be made, read or written (the reason in words).
        case io(String)

        public var description: String {
            switch self {
            case .noFolder: "neither XDG_RUNTIME_DIR nor HOME is set"
            case .unsafeFolder(let path): "\(path) is not a folder only this user can open"
            case .pathTooLong(let path): "the socket path is too long: \(path)"
            case .inUse(let path): "another natchat shell answers on \(path)"
            case .notRunning(let id?): "no natchat shell is running for \(id)"
            case .notRunning(nil): "no natchat shell is running"
            case .several(let ids): "several natchat shells are running (\(ids.joined(separator: ", "))); choose one with --id"
            case .io(let text): text
            }
        }
    }

    /// The most bytes of status a client reads (a status is a few kilobytes at most).
    public static let maxStatusBytes = 1 << 20
    /// How long a client waits for the whole status.
    public static let answerTimeout: TimeAmount = .seconds(3)
    /// Unix socket addresses hold this many bytes of path (with the NUL).
    static let maxPathBytes = 107

    /// The folder the sockets live in (not created).
    public static func folder() throws(Failure) -> String {
        if let runtime = ClientFolders.environment("XDG_RUNTIME_DIR") { return runtime + "/natchat" }
        if let home = ClientFolders.environment("HOME") { return home + "/.local/state/natchat" }
        throw .noFolder
    }

    /// The socket's file name for `id`: the ID with every byte other than ASCII letters,
    /// digits, `-` and `_` written `%XX` (an ID may hold `/` or start with `.`).
    public static func fileName(for id: ClientID) -> String {
        var name = ""
        for byte in id.rawValue.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                name.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                name.unicodeScalars.append("%")
                name.unicodeScalars.append(hex[Int(byte >> 4)])
                name.unicodeScalars.append(hex[Int(byte & 0x0F)])
            }
        }
        return name + ".sock"
    }

    /// The ID a socket's file name stands for (`nil`: not a status socket's name).
    static func id(fromFileName name: String) -> String? {
        guard name.hasSuffix(".sock") else { return nil }
        var bytes: [UInt8] = []
        var utf8 = Array(name.utf8.dropLast(5))[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) else { return nil }
            bytes.append(value)
            utf8 = utf8.dropFirst(2)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    /// Makes every component of `folder` (0700) and checks the last is ours and owner-only.
    static func makeOwnerOnlyFolder(_ folder: String) throws(Failure) {
        ClientFolders.makeFolders(folder)
        var info = stat()
        guard lstat(folder, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == getuid() else {
            throw .unsafeFolder(folder)
        }
        if info.st_mode & 0o077 != 0, chmod(folder, 0o700) != 0 { throw .unsafeFolder(folder) }
    }

    /// A status socket being served; ``close()`` removes it.
    public final class Server: Sendable {
        /// Where the socket is (removed by ``close()``).
        public let path: String
        private let channel: any Channel

        init(path: String, channel: any Channel) {
            self.path = path
            self.channel = channel
        }

        /// Stops serving and removes the socket file.
        public func close() {
            try? channel.close().wait()
            unlink(path)
        }
    }

    /// Serves the status of shell `id`: each connection gets what `status` hands its
    /// callback (called on an event loop; it may answer from another), then is closed.
    public static func serve(id: ClientID, group: any EventLoopGroup,
                             status: @escaping @Sendable (@escaping @Sendable (String) -> Void) -> Void) throws(Failure) -> Server {
        let folder = try folder()
        try makeOwnerOnlyFolder(folder)
        let path = folder + "/" + fileName(for: id)
        guard path.utf8.count <= maxPathBytes else { throw .pathTooLong(path) }
        if (try? fetch(path: path, group: group)) != nil { throw .inUse(path) }
        // Nobody answers: a socket a crashed run left (or none) — replaced.
        unlink(path)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 8)
            .childChannelInitializer { channel in
                status { text in
                    var buffer = channel.allocator.buffer(capacity: text.utf8.count + 1)
                    buffer.writeString(text + "\n")
                    channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
                }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
        let channel: any Channel
        do {
            channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).wait()
        } catch {
            throw .io("cannot serve the status on \(path): \(error)")
        }
        guard chmod(path, 0o600) == 0 else {
            try? channel.close().wait()
            unlink(path)
            throw .io("cannot make \(path) owner-only")
        }
        return Server(path: path, channel: channel)
    }

    /// The socket of the shell running for `id`; with no ID, the one shell running (an
    /// error when there is none, or several).
    public static func socketPath(for id: ClientID?) throws(Failure) -> String {
        let folder = try folder()
        if let id { return folder + "/" + fileName(for: id) }
        var names: [String] = []
        if let directory = opendir(folder) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if Self.id(fromFileName: name) != nil { names.append(name) }
            }
            closedir(directory)
        }
        switch names.count {
        case 0: throw .notRunning(nil)
        case 1: return folder + "/" + names[0]
        default: throw .several(names.compactMap { Self.id(fromFileName: $0) }.sorted())
        }
    }

    /// Connects to the socket at `path` and reads the status (bounded, within ``answerTimeout``).
    public static func fetch(path: String, group: any EventLoopGroup) throws(Failure) -> String {
        let notRunning = Failure.notRunning(id(fromFileName: String(path.split(separator: "/").last ?? "")))
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK else { throw notRunning }
        let promise = group.next().makePromise(of: String.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(1))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(promise: promise, limit: maxStatusBytes))
                }
            }
        let channel: any Channel
        do {
            channel = try bootstrap.connect(unixDomainSocketPath: path).wait()
        } catch {
            promise.fail(Failure.io("\(error)"))
            throw notRunning
        }
        let timeout = channel.eventLoop.scheduleTask(in: answerTimeout) {
            (try? channel.pipeline.syncOperations.handler(type: Collector.self))?.timedOut = true
            channel.close(promise: nil)
        }
        defer { timeout.cancel() }
        do {
            return try promise.futureResult.wait()
        } catch let failure as Failure {
            throw failure
        } catch {
            throw .io("\(error)")
        }
    }

    /// Gathers what the shell writes until it closes the connection (at most `limit` bytes).
    final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        private let promise: EventLoopPromise<String>
        private let limit: Int
        private var received: [UInt8] = []
        private var done = false
        /// Set (on the channel's loop) when the answer took too long; the close that follows fails it.
        var timedOut = false

        init(promise: EventLoopPromise<String>, limit: Int) {
            self.promise = promise
            self.limit = limit
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !done else { return }
            let buffer = unwrapInboundIn(data)
            received += buffer.readableBytesView
            if received.count > limit {
                finish(.failure(Failure.io("the status is longer than \(limit) bytes")))
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(timedOut ? .failure(Failure.io("no whole status within 3 s")) : .success(String(decoding: received, as: UTF8.self)))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(.failure(Failure.io("\(error)")))
            context.close(promise: nil)
        }

        /// Completes the promise once.
        private func finish(_ result: Result<String, any Error>) {
            guard !done else { return }
            done = true
            promise.completeWith(result)
        }
    }
}
