/// An IPv4 address, stored as its 32 bits in network order of significance
/// (`10.0.0.1` is `0x0A000001`).
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var bits: UInt32

    public init(bits: UInt32) { self.bits = bits }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        bits = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses strict dotted-quad text: four decimal numbers 0–255, at most three digits each.
    public init(parsing text: Substring) throws(AddressError) {
        var value: UInt32 = 0
        var octets = 0
        var digits = 0
        var octet: UInt32 = 0
        for byte in text.utf8 {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, octets < 3 else { throw .invalidAddress(String(text)) }
                value = value << 8 | octet
                octets += 1
                digits = 0
                octet = 0
            } else if byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                digits += 1
                octet = octet * 10 + UInt32(byte - UInt8(ascii: "0"))
                guard digits <= 3, octet <= 255 else { throw .invalidAddress(String(text)) }
            } else {
                throw .invalidAddress(String(text))
            }
        }
        guard digits > 0, octets == 3 else { throw .invalidAddress(String(text)) }
        bits = value << 8 | octet
    }

    public init(parsing text: String) throws(AddressError) {
        try self.init(parsing: text[...])
    }

    /// The four octets, most significant first.
    public var octets: (UInt8, UInt8, UInt8, UInt8) {
        (UInt8(truncatingIfNeeded: bits >> 24), UInt8(truncatingIfNeeded: bits >> 16),
         UInt8(truncatingIfNeeded: bits >> 8), UInt8(truncatingIfNeeded: bits))
    }

    /// The first `length` bits of the address (the network prefix).
    public func prefix(_ length: Int) -> UInt32 {
        guard length > 0 else { return 0 }
        guard length < 32 else { return bits }
        return bits & ~(UInt32.max >> UInt32(length))
    }

    /// RFC 1918 private, RFC 6598 shared (carrier NAT) or loopback.
    public var isPrivateOrLoopback: Bool {
        let (a, b, _, _) = octets
        return a == 10 || a == 127 || (a == 172 && (16...31).contains(b)) || (a == 192 && b == 168)
            || (a == 100 && (64...127).contains(b))
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.bits < rhs.bits }

    public var description: String {
        let (a, b, c, d) = octets
        return "\(a).\(b).\(c).\(d)"
    }
}

/// An IPv4 address and a UDP port.
public struct Endpoint: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var port: UInt16

    public init(address: IPv4Address, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// Parses `IP:PORT` (port 1–65535).
    public init(parsing text: Substring) throws(AddressError) {
        guard let colon = text.lastIndex(of: ":") else { throw .invalidAddress(String(text)) }
        address = try IPv4Address(parsing: text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let value = UInt16(portText), value != 0
        else { throw .invalidPort(String(portText)) }
        port = value
    }

    public init(parsing text: String) throws(AddressError) {
        try self.init(parsing: text[...])
    }

    public static func < (lhs: Endpoint, rhs: Endpoint) -> Bool {
        (lhs.address, lhs.port) < (rhs.address, rhs.port)
    }

    public var description: String { "\(address):\(port)" }
}
