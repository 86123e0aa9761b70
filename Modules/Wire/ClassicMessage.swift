import Addressing

/// Every message of the classic dialect: the seed document's text datagrams.
///
/// Each message is one UDP datagram of UTF-8 text without a line terminator. Because a
/// ``ClientID`` can hold no space, `@` or `:`, every datagram decodes to at most one case,
/// whichever side receives it.
///
/// | case | text |
/// | --- | --- |
/// | ``register(_:privateAddress:offers:)`` | `ID PRIVATE_IP` (natchat may append offer tokens) |
/// | ``keepAlive(_:)`` | `ID@keepalive` |
/// | ``unregister(_:)`` | `ID @exit` |
/// | ``peer(_:_:)`` | `ID PUBLIC_IP:PORT` |
/// | ``peerPrivate(_:_:)`` | `ID@private:PRIVATE_IP` |
/// | ``unregistered(_:_:)`` | `ID is unregistered PUBLIC_IP:PORT` |
/// | ``offline(_:_:)`` | `ID is off-line PUBLIC_IP:PORT` |
/// | ``chat(from:text:)`` | `FROM@chat TEXT` |
/// | ``serverNotice(_:)`` | `server@chat TEXT` (a chat from the reserved ID `server`) |
public enum ClassicMessage: Hashable, Sendable {
    /// Client → server: register `id`, reporting the client's private address. `offers`
    /// are extra space-separated tokens a natchat client appends to propose the extended
    /// dialect; the seed's server reads only the first two fields, so it ignores them.
    case register(ClientID, privateAddress: IPv4Address, offers: [String] = [])
    /// Client → server, every keep-alive interval.
    case keepAlive(ClientID)
    /// Client → server: leaving.
    case unregister(ClientID)
    /// Server → client: `id` is registered and the server sees it at `publicEndpoint`.
    case peer(ClientID, Endpoint)
    /// Server → client, after ``peer(_:_:)``: `id` sits behind the receiver's NAT at this address.
    case peerPrivate(ClientID, IPv4Address)
    /// Server → client: `id` left with `@exit`.
    case unregistered(ClientID, Endpoint)
    /// Server → client: `id` fell silent and was evicted.
    case offline(ClientID, Endpoint)
    /// Client → client: a chat message.
    case chat(from: ClientID, text: String)
    /// Server → client: a notice for a person to read, shown by classic clients as a chat
    /// from `server` (for example a refused registration).
    case serverNotice(String)

    /// The longest datagram the dialect accepts (the seed's receive buffer).
    public static let maxDatagramLength = 2048
    /// At most this many offer tokens, each at most ``maxOfferLength`` bytes.
    public static let maxOffers = 4
    public static let maxOfferLength = 32

    static let serverSender = "server"
}

extension ClassicMessage {
    /// The datagram's text.
    public var text: String {
        switch self {
        case .register(let id, let address, let offers):
            ([id.rawValue, address.description] + offers).joined(separator: " ")
        case .keepAlive(let id): "\(id)@keepalive"
        case .unregister(let id): "\(id) @exit"
        case .peer(let id, let endpoint): "\(id) \(endpoint)"
        case .peerPrivate(let id, let address): "\(id)@private:\(address)"
        case .unregistered(let id, let endpoint): "\(id) is unregistered \(endpoint)"
        case .offline(let id, let endpoint): "\(id) is off-line \(endpoint)"
        case .chat(let from, let text): "\(from)@chat \(text)"
        case .serverNotice(let text): "\(Self.serverSender)@chat \(text)"
        }
    }

    /// The datagram's bytes.
    public func encode() -> [UInt8] { Array(text.utf8) }

    /// Decodes one datagram. Throws ``WireError`` for anything that is not exactly one
    /// classic message.
    public static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(WireError) -> ClassicMessage {
        if bytes.isEmpty { throw .empty }
        if bytes.count > maxDatagramLength { throw .datagramTooLong(length: bytes.count, limit: maxDatagramLength) }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .invalidUTF8 }
        return try decode(text: text)
    }

    /// Decodes the text of one datagram.
    ///
    /// Separators (`@`, space) are found in the UTF-8 bytes, not in `Character`s: a
    /// combining mark after a space would otherwise merge with it into one grapheme and
    /// hide the separator.
    public static func decode(text: String) throws(WireError) -> ClassicMessage {
        let bytes = Array(text.utf8)
        if bytes.isEmpty { throw .empty }
        if let at = bytes.firstIndex(of: UInt8(ascii: "@")) {
            return try decodeAtForm(head: bytes[..<at], tail: bytes[(at + 1)...])
        }
        let fields = bytes.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        switch fields.count {
        case 2:
            let id = try clientID(fields[0])
            if fields[1].contains(UInt8(ascii: ":")) {
                return .peer(id, try Endpoint(decoding: string(fields[1])[...]))
            }
            return .register(id, privateAddress: try IPv4Address(decoding: string(fields[1])[...]))
        case 3...(2 + maxOffers) where !fields[1].elementsEqual("is".utf8):
            let id = try clientID(fields[0])
            let address = try IPv4Address(decoding: string(fields[1])[...])
            let offers = fields[2...].map(string)
            guard offers.allSatisfy({ !$0.isEmpty && $0.utf8.count <= maxOfferLength && ClientID.violation(in: $0) == nil })
            else { throw .unrecognized }
            return .register(id, privateAddress: address, offers: offers)
        case 4 where fields[1].elementsEqual("is".utf8):
            let id = try clientID(fields[0])
            let endpoint = try Endpoint(decoding: string(fields[3])[...])
            switch string(fields[2]) {
            case "unregistered": return .unregistered(id, endpoint)
            case "off-line": return .offline(id, endpoint)
            default: throw .unrecognized
            }
        default:
            throw .unrecognized
        }
    }

    private static func string(_ bytes: ArraySlice<UInt8>) -> String {
        // The slice came from valid UTF-8 split at ASCII bytes, so it is valid UTF-8 too.
        String(decoding: bytes, as: UTF8.self)
    }

    private static func clientID(_ bytes: ArraySlice<UInt8>) throws(WireError) -> ClientID {
        try ClientID(decoding: string(bytes))
    }

    private static func decodeAtForm(head: ArraySlice<UInt8>, tail: ArraySlice<UInt8>) throws(WireError) -> ClassicMessage {
        if tail.elementsEqual("exit".utf8), head.last == UInt8(ascii: " ") {
            return .unregister(try clientID(head.dropLast()))
        }
        if tail.elementsEqual("keepalive".utf8) {
            return .keepAlive(try clientID(head))
        }
        if tail.starts(with: "private:".utf8) {
            return .peerPrivate(try clientID(head), try IPv4Address(decoding: string(tail.dropFirst("private:".utf8.count))[...]))
        }
        if tail.starts(with: "chat ".utf8) || tail.elementsEqual("chat".utf8) {
            let body = string(tail.dropFirst(min(tail.count, "chat ".utf8.count)))
            guard !body.unicodeScalars.contains(where: isForbiddenInText) else { throw .controlCharacterInText }
            if head.elementsEqual(serverSender.utf8) { return .serverNotice(body) }
            return .chat(from: try clientID(head), text: body)
        }
        throw .unrecognized
    }

    /// When `bytes` look like a classic registration (`ID PRIVATE_IP [offers]`) whose ID
    /// breaks the rules, the rule it breaks; `nil` otherwise. The server answers such a
    /// datagram with a refusal instead of dropping it in silence.
    public static func invalidRegistrationID<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> ClientID.Violation? {
        guard bytes.count <= maxDatagramLength, let text = String(validating: bytes, as: UTF8.self) else { return nil }
        let fields = Array(text.utf8).split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard (2...(2 + maxOffers)).contains(fields.count), !fields[0].contains(UInt8(ascii: "@")) || fields.count >= 2,
              (try? IPv4Address(parsing: string(fields[1])[...])) != nil
        else { return nil }
        return ClientID.violation(in: string(fields[0]))
    }

    /// Control characters other than tab are refused in chat text: they would drive the
    /// reader's terminal (escape sequences, carriage returns over earlier lines). The one
    /// rule for every place chat text enters: datagrams, decrypted chat, typed commands.
    public static func isForbiddenInText(_ scalar: Unicode.Scalar) -> Bool {
        scalar != "\t" && scalar.properties.generalCategory == .control
    }
}
