/// A little-endian-free (network order) byte writer for the binary dialects.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { bytes.append(UInt8(value >> 8)); bytes.append(UInt8(truncatingIfNeeded: value)) }
    public mutating func u32(_ value: UInt32) {
        u16(UInt16(value >> 16))
        u16(UInt16(truncatingIfNeeded: value))
    }
    public mutating func u64(_ value: UInt64) {
        u32(UInt32(value >> 32))
        u32(UInt32(truncatingIfNeeded: value))
    }
    public mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }

    /// One length byte, then the bytes (at most 255).
    public mutating func shortBytes(_ data: [UInt8]) {
        u8(UInt8(min(data.count, 255)))
        bytes.append(contentsOf: data.prefix(255))
    }

    /// Two length bytes, then the bytes (at most 65535).
    public mutating func longBytes(_ data: some Collection<UInt8>) {
        u16(UInt16(min(data.count, 65535)))
        bytes.append(contentsOf: data.prefix(65535))
    }

    public mutating func endpoint(_ endpoint: Endpoint) {
        u32(endpoint.address.bits)
        u16(endpoint.port)
    }

    public mutating func clientID(_ id: ClientID) { shortBytes(Array(id.rawValue.utf8)) }
}

/// Reads what ``WireWriter`` wrote; every read throws ``WireError/malformed(_:)`` when the
/// datagram is cut short, never traps.
public struct WireReader {
    private let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }

    public mutating func u8(_ field: StaticString = "byte") throws(WireError) -> UInt8 {
        guard offset < bytes.count else { throw .malformed("truncated \(field)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16(_ field: StaticString = "u16") throws(WireError) -> UInt16 {
        let high = try u8(field)
        let low = try u8(field)
        return UInt16(high) << 8 | UInt16(low)
    }

    public mutating func u32(_ field: StaticString = "u32") throws(WireError) -> UInt32 {
        let high = try u16(field)
        let low = try u16(field)
        return UInt32(high) << 16 | UInt32(low)
    }

    public mutating func u64(_ field: StaticString = "u64") throws(WireError) -> UInt64 {
        let high = try u32(field)
        let low = try u32(field)
        return UInt64(high) << 32 | UInt64(low)
    }

    public mutating func raw(_ count: Int, _ field: StaticString = "bytes") throws(WireError) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw .malformed("truncated \(field)") }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    public mutating func shortBytes(_ field: StaticString = "bytes") throws(WireError) -> [UInt8] {
        try raw(Int(try u8(field)), field)
    }

    public mutating func longBytes(_ field: StaticString = "bytes") throws(WireError) -> [UInt8] {
        try raw(Int(try u16(field)), field)
    }

    public mutating func endpoint() throws(WireError) -> Endpoint {
        let address = try u32("address")
        let port = try u16("port")
        return Endpoint(address: IPv4Address(bits: address), port: port)
    }

    public mutating func clientID() throws(WireError) -> ClientID {
        let raw = try shortBytes("client ID")
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8 }
        return try ClientID(text)
    }

    /// Throws unless every byte was read: trailing garbage is an error, not ignored.
    public func expectEnd() throws(WireError) {
        guard isAtEnd else { throw .malformed("\(remaining) trailing bytes") }
    }
}
