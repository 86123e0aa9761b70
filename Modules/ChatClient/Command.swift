import Addressing
import Wire

/// A command the user typed.
public enum Command: Hashable, Sendable {
    /// `@show_list [<prefix>] [<page>]`: page `page` (from 1) of the registered clients whose
    /// ID starts with `prefix` (all of them when `nil`).
    case showList(prefix: String? = nil, page: Int = 1)
    case chat(to: ClientID, text: String)
    /// `@trust <id>`: the key `id` showed while held replaces the pinned one.
    case trust(ClientID)
    /// `@whois <id>`: the pinned key, when it was first and last seen, whether `id` is held, the path.
    case whois(ClientID)
    /// `@status`: our ID, key, public endpoint, NAT and server round trip; each peer's path,
    /// round trip, when it was last heard and why a relayed peer is relayed.
    case status
    /// `@ping <id>`: the round trip to `id` over the current path, and which path answered.
    case ping(ClientID)
    case exit
    case help

    /// The commands, for `@help` and Tab completion.
    public static let names = table.map(\.name)

    /// The commands whose first argument is a peer ID (`@show_list`'s ID prefix, `@chat`'s
    /// recipient, `@whois` and `@trust`): Tab completes that word from the roster.
    public static let peerArgumentNames = table.filter(\.takesPeerID).map(\.name)

    /// Each command word, in `@help` order, and whether its first argument is a peer ID.
    private static let table: [(name: String, takesPeerID: Bool)] = [
        ("@show_list", true), ("@chat", true), ("@whois", true), ("@trust", true), ("@ping", true), ("@status", false),
        ("@exit", false), ("@help", false),
    ]

    /// Why a typed line is not a command.
    public enum ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        case usage(String)
        case unknown(String)

        public var description: String {
            switch self {
            case .usage(let text): "usage: \(text)"
            case .unknown(let word): "unknown command: \(word) (try @help)"
            }
        }
    }

    static let chatUsage = "@chat <id> <text>"
    static let showListUsage = "@show_list [<id prefix>] [<page>]"

    /// The longest chat text in UTF-8 bytes: it must fit one extended datagram, relay
    /// envelope and encryption included (and so a classic one too).
    public static let maxTextBytes = 1024

    /// Parses one typed line; `nil` for a blank line. Words are split at ASCII spaces and
    /// tabs in the UTF-8 bytes, so a combining mark after a space stays in the text.
    public static func parse(_ line: String) throws(ParseError) -> Command? {
        let isBlank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        let bytes = Array(line.utf8)
        let trimmed = bytes.drop(while: isBlank)
        guard !trimmed.isEmpty else { return nil }
        let word = trimmed.prefix { !isBlank($0) }
        let argument = trimmed.dropFirst(word.count).drop(while: isBlank)
        let wordText = String(decoding: word, as: UTF8.self)
        switch wordText {
        case "@show_list":
            return try parseShowList(arguments: argument.split(whereSeparator: isBlank))
        case "@exit":
            guard argument.allSatisfy(isBlank) else { throw .usage("@exit") }
            return .exit
        case "@help":
            return .help
        case "@status":
            guard argument.allSatisfy(isBlank) else { throw .usage("@status") }
            return .status
        case "@trust", "@whois", "@ping":
            let usage = "\(wordText) <id>"
            let words = argument.split(whereSeparator: isBlank)
            guard words.count == 1 else { throw .usage(usage) }
            let idText = String(decoding: words[0], as: UTF8.self)
            guard let id = try? ClientID(idText) else { throw .usage(usage + " (\"\(idText.prefix(40))\" is not a valid ID)") }
            switch wordText {
            case "@trust": return .trust(id)
            case "@ping": return .ping(id)
            default: return .whois(id)
            }
        case "@chat":
            let idBytes = argument.prefix { !isBlank($0) }
            guard !idBytes.isEmpty else { throw .usage(chatUsage) }
            let idText = String(decoding: idBytes, as: UTF8.self)
            let textBytes = argument.dropFirst(idBytes.count).dropFirst()
            guard !textBytes.isEmpty else { throw .usage(chatUsage + " (the text is missing)") }
            let text = String(decoding: textBytes, as: UTF8.self)
            guard let id = try? ClientID(idText) else { throw .usage(chatUsage + " (\"\(idText.prefix(40))\" is not a valid ID)") }
            guard !text.unicodeScalars.contains(where: ClassicMessage.isForbiddenInText) else {
                throw .usage(chatUsage + " (the text holds a control character)")
            }
            let maxText = maxTextBytes
            guard text.utf8.count <= maxText else { throw .usage(chatUsage + " (the text is longer than \(maxText) bytes)") }
            return .chat(to: id, text: text)
        default:
            throw .unknown(String(wordText.prefix(40)))
        }
    }

    /// `@show_list` arguments: none; a page number; a prefix; or a prefix and a page number
    /// (so a prefix made of digits is written with its page: `@show_list 42 1`).
    private static func parseShowList(arguments: [ArraySlice<UInt8>]) throws(ParseError) -> Command {
        let isDigits: (ArraySlice<UInt8>) -> Bool = { $0.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) } }
        func page(_ word: ArraySlice<UInt8>) throws(ParseError) -> Int {
            guard isDigits(word) else { throw .usage(showListUsage + " (the second argument must be a page number)") }
            guard let number = Int(String(decoding: word, as: UTF8.self)), number <= maxListPage else {
                throw .usage(showListUsage + " (no page is that far)")
            }
            guard number >= 1 else { throw .usage(showListUsage + " (pages start at 1)") }
            return number
        }
        func prefix(_ word: ArraySlice<UInt8>) throws(ParseError) -> String {
            let text = String(decoding: word, as: UTF8.self)
            guard let violation = ClientID.violation(in: text) else { return text }
            if case .forbiddenCharacter(let scalar) = violation {
                let shown = scalar.isASCII && scalar.value > 0x20 && scalar.value < 0x7F
                    ? "\"\(Character(scalar))\"" : "U+\(String(scalar.value, radix: 16, uppercase: true))"
                throw .usage(showListUsage + " (no ID holds \(shown))")
            }
            throw .usage(showListUsage + " (the prefix is longer than an ID can be)")
        }
        switch arguments.count {
        case 0:
            return .showList()
        case 1 where isDigits(arguments[0]):
            return .showList(page: try page(arguments[0]))
        case 1:
            return .showList(prefix: try prefix(arguments[0]))
        case 2:
            return .showList(prefix: try prefix(arguments[0]), page: try page(arguments[1]))
        default:
            throw .usage(showListUsage + " (too many arguments)")
        }
    }

    /// The highest page number `@show_list` accepts (far beyond any roster).
    static let maxListPage = 1_000_000_000

    /// The text `@help` prints.
    public static let helpText = """
        commands:
          @show_list            list registered clients (you included) and their public endpoints;
                                a long list is shown a page at a time, with a line saying what follows
          @show_list <n>        page <n> of the list
          @show_list <prefix>   only the clients whose ID starts with <prefix>;
                                @show_list <prefix> <n> for page <n> of those
          @chat <id> <text>     send <text> to client <id>; when <id> is offline (or does not answer) but
                                its ID is claimed, the server keeps it, sealed, until <id> registers
          @whois <id>           the key pinned for <id>, when it was first and last seen, whether chat
                                with <id> is held (its key changed), and the path to it
          @trust <id>           after checking <id>'s new key out of band: pin it, and chat goes on
          @ping <id>            the round trip to <id> over the current path (direct, private or relayed),
                                and which path answered
          @status               your ID, key, public endpoint, NAT and server round trip; then each peer's
                                path, round trip, when it was last heard, and why a relayed peer is relayed
                                (natchat --status prints the same from another terminal)
          @exit                 unregister and quit (end of input and Ctrl-C do the same)
          @help                 this help
        """
}
