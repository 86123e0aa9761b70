import Addressing

/// Why a datagram or a field could not be decoded. Decoders throw this and nothing else:
/// bad input from the network is an ordinary, typed outcome, never a crash.
public enum WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The datagram is longer than the dialect allows.
    case datagramTooLong(length: Int, limit: Int)
    /// The datagram is empty.
    case empty
    /// The bytes are not valid UTF-8 (classic messages are UTF-8 text).
    case invalidUTF8
    /// A client ID breaks the ID rules (``AddressError/invalidClientID(_:)``).
    case invalidClientID(ClientID.Violation)
    /// An IPv4 address did not parse (``AddressError/invalidAddress(_:)``).
    case invalidAddress(String)
    /// A port did not parse or is out of range (``AddressError/invalidPort(_:)``).
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
        case .invalidClientID(let violation): AddressError.invalidClientID(violation).description
        case .invalidAddress(let text): AddressError.invalidAddress(text).description
        case .invalidPort(let text): AddressError.invalidPort(text).description
        case .controlCharacterInText: "control character in chat text"
        case .unrecognized: "unrecognized message"
        case .malformed(let why): "malformed message: \(why)"
        }
    }
}

extension WireError {
    /// The decoding error for an ID, address or port that did not parse: the same case,
    /// with the same text.
    public init(_ error: AddressError) {
        switch error {
        case .invalidClientID(let violation): self = .invalidClientID(violation)
        case .invalidAddress(let text): self = .invalidAddress(text)
        case .invalidPort(let text): self = .invalidPort(text)
        }
    }
}

// The decoders' readings of an ID, an address and an endpoint: the parsers of Addressing,
// with their ``AddressError`` reported as the ``WireError`` of the same case.

extension ClientID {
    init(decoding text: String) throws(WireError) {
        do { self = try ClientID(text) } catch { throw WireError(error) }
    }
}

extension IPv4Address {
    init(decoding text: Substring) throws(WireError) {
        do { self = try IPv4Address(parsing: text) } catch { throw WireError(error) }
    }
}

extension Endpoint {
    init(decoding text: Substring) throws(WireError) {
        do { self = try Endpoint(parsing: text) } catch { throw WireError(error) }
    }
}
