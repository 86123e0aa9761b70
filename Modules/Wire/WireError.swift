/// Why a datagram or a field could not be decoded. Decoders throw this and nothing else:
/// bad input from the network is an ordinary, typed outcome, never a crash.
public enum WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The datagram is longer than the dialect allows.
    case datagramTooLong(length: Int, limit: Int)
    /// The datagram is empty.
    case empty
    /// The bytes are not valid UTF-8 (classic messages are UTF-8 text).
    case invalidUTF8
    /// A client ID breaks the ID rules.
    case invalidClientID(ClientID.Violation)
    /// An IPv4 address did not parse.
    case invalidAddress(String)
    /// A port did not parse or is out of range.
    case invalidPort(String)
    /// Chat text holds a control character (it would drive the reader's terminal).
    case controlCharacterInText
    /// The text matches no message of the dialect.
    case unrecognized
    /// A binary message is cut short or has a bad field (extended dialects).
    case malformed(String)

    public var description: String {
        switch self {
        case .datagramTooLong(let length, let limit): "datagram of \(length) bytes exceeds \(limit)"
        case .empty: "empty datagram"
        case .invalidUTF8: "not valid UTF-8"
        case .invalidClientID(let violation): "invalid client ID: \(violation)"
        case .invalidAddress(let text): "invalid IPv4 address '\(text.prefix(64))'"
        case .invalidPort(let text): "invalid port '\(text.prefix(16))'"
        case .controlCharacterInText: "control character in chat text"
        case .unrecognized: "unrecognized message"
        case .malformed(let why): "malformed message: \(why)"
        }
    }
}
