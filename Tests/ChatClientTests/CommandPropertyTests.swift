import Addressing
import Testing
@testable import ChatClient
import TestSupport

/// A seeded random search over typed lines (the shell's decoder): whatever is typed,
/// `Command.parse` answers a command, nothing, or a `ParseError` — never a trap — and a
/// parsed chat survives being typed again.
@Suite("Command.parse property")
struct CommandPropertyTests {
    static let pieces: [String] = ["@chat", "@show_list", "@exit", "@help", "@", " ", "  ", "\t", "bob", "alice", "a:b",
                                   "한국어", "\u{301}", "\u{1}", "\u{7F}", "\n", "x", "é", "🙂", "\u{200B}", ":", "server",
                                   String(repeating: "y", count: 40), String(repeating: "z", count: 1100)]

    @Test func randomLinesNeverTrapAndChatsRoundTrip() throws {
        var random = SplitMix64(state: 0x5EED)
        var parsedChats = 0
        for _ in 0..<20_000 {
            let count = Int(random.next() % 8)
            var line = (0..<count).map { _ in Self.pieces[Int(random.next() % UInt64(Self.pieces.count))] }.joined()
            // Half the lines start like a chat, so the chat path gets explored as well.
            if random.next() % 2 == 0 { line = "@chat " + ["bob", "한국어", "a:b", ""][Int(random.next() % 4)] + " " + line }
            let command: Command?
            do {
                command = try Command.parse(line)
            } catch {
                continue
            }
            guard case .chat(let to, let text)? = command else { continue }
            parsedChats += 1
            #expect(!text.isEmpty)
            #expect(text.utf8.count <= Command.maxTextBytes)
            #expect(!text.unicodeScalars.contains { $0 != "\t" && $0.properties.generalCategory == .control })
            #expect(ClientID.violation(in: to.rawValue) == nil)
            #expect(try Command.parse("@chat \(to) \(text)") == .chat(to: to, text: text))
        }
        #expect(parsedChats > 100)
    }
}
