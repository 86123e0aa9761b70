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

    /// Parses one typed line; `nil` for a blank line.
    public static func parse(_ line: String) throws(ParseError) -> Command? {
        let trimmed = line.drop { $0 == " " || $0 == "\t" }
        guard !trimmed.isEmpty else { return nil }
        let word = trimmed.prefix { $0 != " " && $0 != "\t" }
        let rest = trimmed.dropFirst(word.count)
        let argument = rest.drop { $0 == " " || $0 == "\t" }
        switch word {
        case "@show_list":
            guard argument.allSatisfy({ $0 == " " || $0 == "\t" }) else { throw .usage("@show_list") }
            return .showList
        case "@exit":
            guard argument.allSatisfy({ $0 == " " || $0 == "\t" }) else { throw .usage("@exit") }
            return .exit
        case "@help":
            return .help
        case "@chat":
            let idText = argument.prefix { $0 != " " && $0 != "\t" }
            guard !idText.isEmpty else { throw .usage(chatUsage) }
            let text = argument.dropFirst(idText.count).dropFirst()
            guard !text.isEmpty else { throw .usage(chatUsage + " (the text is missing)") }
            guard let id = try? ClientID(String(idText)) else { throw .usage(chatUsage + " (\"\(idText.prefix(40))\" is not a valid ID)") }
            guard !text.unicodeScalars.contains(where: { $0 != "\t" && $0.properties.generalCategory == .control }) else {
                throw .usage(chatUsage + " (the text holds a control character)")
            }
            let maxText = ClassicMessage.maxDatagramLength - ClientID.maxUTF8Length - "@chat ".utf8.count
            guard text.utf8.count <= maxText else { throw .usage(chatUsage + " (the text is longer than \(maxText) bytes)") }
            return .chat(to: id, text: String(text))
        default:
            throw .unknown(String(word.prefix(40)))
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
