import Wire

/// A command the user typed.
public enum Command: Hashable, Sendable {
    case showList
    case chat(to: ClientID, text: String)
    case exit
    case help

    /// The commands, for `@help` and Tab completion.
    public static let names = ["@show_list", "@chat", "@exit", "@help"]

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
            guard argument.allSatisfy(isBlank) else { throw .usage("@show_list") }
            return .showList
        case "@exit":
            guard argument.allSatisfy(isBlank) else { throw .usage("@exit") }
            return .exit
        case "@help":
            return .help
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

    /// The text `@help` prints.
    public static let helpText = """
        commands:
          @show_list          list registered clients (you included) and their public endpoints
          @chat <id> <text>   send <text> to client <id>
          @exit               unregister and quit (end of input and Ctrl-C do the same)
          @help               this help
        """
}
