#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CReadline
import Synchronization

/// The interactive console: GNU readline line editing, persistent bounded history, Tab
/// completion of commands and of peer IDs after the commands that take one, and lines from
/// the network printed above the prompt with the half-typed line restored.
///
/// readline's state is process-wide C globals, so every readline call happens on the one
/// thread that runs ``run(onLine:)``. Other threads only queue work (lines to show, a stop)
/// and wake that thread through a pipe, or replace the peer-ID provider, which Tab calls on
/// that thread (see ``setPeerCompletion(_:)``).
public final class ReadlineConsole: Console {
    private struct Pending {
        var lines: [String] = []
        var stopRequested = false
    }

    private let prompt: String
    private let commands: [String]
    private let peerArgumentCommands: [String]
    private let historyPath: String?
    private let historyLimit: Int
    private let pending = Mutex(Pending())
    private let peerSource = PeerCompletionSource()
    private let wakeRead: Int32
    private let wakeWrite: Int32

    /// - Parameters:
    ///   - commands: words Tab completes at the start of a line.
    ///   - peerArgumentCommands: the commands whose first argument is a peer ID (natchat's
    ///     shell passes `Command.peerArgumentNames`: `@show_list` and `@chat`). When the
    ///     line starts with one of these words and a space, Tab completes the next word from
    ///     the provider set with ``setPeerCompletion(_:)``; words after it complete nothing.
    ///     Empty: no word completes to a peer ID.
    ///   - historyPath: where history is kept across runs (`nil`: not kept).
    ///   - historyLimit: most history lines kept in the file.
    public init(prompt: String = "> ", commands: [String], peerArgumentCommands: [String],
                historyPath: String?, historyLimit: Int = 1000) {
        self.prompt = prompt
        self.commands = commands
        self.peerArgumentCommands = peerArgumentCommands
        self.historyPath = historyPath
        self.historyLimit = historyLimit
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    public func show(_ text: String) {
        pending.withLock { $0.lines.append(text) }
        wake()
    }

    /// Replaces the peer-ID provider (from any thread; the next Tab uses it). Tab calls it on
    /// the thread running ``run(onLine:)`` with the typed prefix of the word right after one
    /// of the console's `peerArgumentCommands`; while it blocks, readline shows nothing and
    /// queued lines wait. IDs it returns that do not start with the prefix are not offered.
    public func setPeerCompletion(_ provider: @escaping @Sendable (String) -> [String]) {
        peerSource.set(provider)
    }

    public func stop() {
        pending.withLock { $0.stopRequested = true }
        wake()
    }

    public func run(onLine: (String) -> LineDisposition) {
        if let historyPath { _ = natchat_rl_history_load(historyPath) }
        setCompletionWords(commands: commands, peerArgumentCommands: peerArgumentCommands)
        natchat_rl_install(prompt)
        defer {
            natchat_rl_remove()
            if let historyPath { _ = natchat_rl_history_save(historyPath, Int32(historyLimit)) }
        }
        peerSource.installed { readLines(onLine: onLine) }
    }

    /// Tab completion as this console's readline would compute it, without a terminal (tests).
    func completionCandidates(line: String, start: Int, text: String) -> [String] {
        Completion.candidates(line: line, start: start, text: text, commands: commands,
                              peerArgumentCommands: peerArgumentCommands, source: peerSource)
    }

    private func readLines(onLine: (String) -> LineDisposition) {
        // Every iteration blocks in poll(2) until a key or a wake-up arrives: no busy loop.
        var fds = [pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while true {
            if drainPending() { return }
            fds[0].revents = 0
            fds[1].revents = 0
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 { drainWakePipe() }
            if drainPending() { return }
            if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                natchat_rl_read_char()
                var line: UnsafeMutablePointer<CChar>?
                switch natchat_rl_take_line(&line) {
                case 1:
                    guard let line else { continue }
                    let text = String(cString: line)
                    free(line)
                    if !text.trimmingSpaces.isEmpty { natchat_rl_history_add(text) }
                    if onLine(text) == .stop { return }
                case 2:
                    return
                default:
                    continue
                }
            }
        }
    }

    /// Shows queued lines; `true` when asked to stop.
    private func drainPending() -> Bool {
        let work = pending.withLock { state -> Pending in
            defer { state.lines.removeAll() }
            return state
        }
        for line in work.lines { natchat_rl_print_above(line) }
        return work.stopRequested
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func drainWakePipe() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &buffer, buffer.count) > 0 {}
    }
}

/// Tab completion candidates, as readline sees them: for the word at `start` (a UTF-8 byte
/// offset) with prefix `text` in `line`. `commands` complete the first word; peer IDs
/// complete the word right after one of `peerArgumentCommands` followed by a space (in
/// natchat's shell, `@chat ` for the peer ID and `@show_list ` for the ID prefix). Nothing
/// completes later words (the chat text, the page number), and there is no fallback to
/// file names. The first element is the longest common prefix (readline's convention),
/// followed by the matches (commands in list order, peer IDs in the provider's order); no
/// match gives `[]`.
///
/// These run the shim's C code on the calling thread and set its process-wide completion
/// state, so call them one at a time and not while a ``ReadlineConsole`` runs.
public enum Completion {
    /// The `peerArgumentCommands` the `candidates` functions use when given none: natchat's
    /// shell's (`@chat`, `@show_list`), so callers written before the list was a parameter
    /// (the benchmarks) complete as they did. A console is always given its list.
    public static let defaultPeerArgumentCommands = ["@chat", "@show_list"]

    /// Peer IDs from `peers`: those that start with the typed prefix, in list order.
    public static func candidates(line: String, start: Int, text: String, commands: [String],
                                  peerArgumentCommands: [String] = defaultPeerArgumentCommands,
                                  peers: [String]) -> [String] {
        candidates(line: line, start: start, text: text, commands: commands, peerArgumentCommands: peerArgumentCommands) { prefix in
            peers.filter { $0.utf8.starts(with: prefix.utf8) }
        }
    }

    /// Peer IDs from `peerCompletion`, asked with the typed prefix only when the word being
    /// completed is a peer ID (as ``Console/setPeerCompletion(_:)``'s provider is).
    public static func candidates(line: String, start: Int, text: String, commands: [String],
                                  peerArgumentCommands: [String] = defaultPeerArgumentCommands,
                                  peerCompletion: @escaping @Sendable (String) -> [String]) -> [String] {
        candidates(line: line, start: start, text: text, commands: commands, peerArgumentCommands: peerArgumentCommands,
                   source: PeerCompletionSource(peerCompletion))
    }

    static func candidates(line: String, start: Int, text: String, commands: [String], peerArgumentCommands: [String],
                           source: PeerCompletionSource) -> [String] {
        setCompletionWords(commands: commands, peerArgumentCommands: peerArgumentCommands)
        guard let array = source.installed({ natchat_rl_candidates(line, Int32(start), text) }) else { return [] }
        defer { natchat_rl_free_candidates(array) }
        var result: [String] = []
        var index = 0
        while let item = array[index] {
            result.append(String(cString: item))
            index += 1
        }
        return result
    }
}

/// Hands both word lists to the shim (which copies them); on the thread that owns readline.
private func setCompletionWords(commands: [String], peerArgumentCommands: [String]) {
    withCStrings(commands) { natchat_rl_set_commands($0, Int32(commands.count)) }
    withCStrings(peerArgumentCommands) { natchat_rl_set_peer_argument_commands($0, Int32(peerArgumentCommands.count)) }
}

private func withCStrings(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> Void) {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    pointers.withUnsafeMutableBufferPointer { buffer in
        buffer.baseAddress.map { base in
            base.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) { body($0) }
        } ?? body(nil)
    }
}

extension String {
    var trimmingSpaces: Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return self[first...last]
    }
}
