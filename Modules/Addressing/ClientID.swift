/// A client's name on the rendezvous server: 1–32 bytes of UTF-8 with no space, `@`, `:`
/// or control character (the classic dialect splits on the first three).
public struct ClientID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The longest ID in UTF-8 bytes.
    public static let maxUTF8Length = 32

    /// IDs nobody may register: `server` names the rendezvous server in notices.
    public static let reserved: Set<String> = ["server"]

    /// The rule an ID broke.
    public enum Violation: Hashable, Sendable, CustomStringConvertible {
        case empty
        case tooLong(Int)
        case forbiddenCharacter(Unicode.Scalar)

        public var description: String {
            switch self {
            case .empty: "empty"
            case .tooLong(let n): "\(n) bytes, more than \(ClientID.maxUTF8Length)"
            case .forbiddenCharacter(let c): "contains forbidden character U+\(String(c.value, radix: 16, uppercase: true))"
            }
        }
    }

    /// The ID's text.
    public let rawValue: String

    /// Makes an ID, checking the rules.
    public init(_ text: String) throws(AddressError) {
        if let violation = Self.violation(in: text) { throw .invalidClientID(violation) }
        rawValue = text
    }

    /// Whether `text` may be an ID; `nil` when it may.
    public static func violation(in text: String) -> Violation? {
        let length = text.utf8.count
        if length == 0 { return .empty }
        if length > maxUTF8Length { return .tooLong(length) }
        for scalar in text.unicodeScalars where isForbidden(scalar) {
            return .forbiddenCharacter(scalar)
        }
        return nil
    }

    /// Whether the ID is one nobody may register.
    public var isReserved: Bool { Self.reserved.contains(rawValue) }

    static func isForbidden(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case " ", "@", ":": return true
        default: return scalar.properties.generalCategory == .control
                || scalar.properties.isWhitespace
                || scalar.properties.generalCategory == .format
        }
    }

    public static func < (lhs: ClientID, rhs: ClientID) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { rawValue }
}

extension ClientID {
    /// A key for looking up a registered ID by its bytes as received: not checked against
    /// the rules, so it can only ever match an ID that was (the registry's in-place paths).
    package init(lookingUp utf8: UnsafeRawBufferPointer) {
        rawValue = String(decoding: utf8, as: UTF8.self)
    }
}
