/// Why a client ID, an IPv4 address or an endpoint did not parse. The initialisers of
/// ``ClientID``, ``IPv4Address`` and ``Endpoint`` throw this and nothing else. The natchat
/// codecs (module Wire) report the same three cases, with the same text, as `WireError`.
public enum AddressError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A client ID breaks the ID rules.
    case invalidClientID(ClientID.Violation)
    /// An IPv4 address did not parse.
    case invalidAddress(String)
    /// A port did not parse or is out of range.
    case invalidPort(String)

    public var description: String {
        switch self {
        case .invalidClientID(let violation): "invalid client ID: \(violation)"
        case .invalidAddress(let text): "invalid IPv4 address '\(text.prefix(64))'"
        case .invalidPort(let text): "invalid port '\(text.prefix(16))'"
        }
    }
}
